"""Alembic environment of the consent service (the shared kit does the work)."""

from bizmsg.kit.storage import run_migrations_env
from consent_svc.models import Base

run_migrations_env(Base.metadata)
