"""Alembic environment of the delivery service (the shared kit does the work)."""

from bizmsg.kit.storage import run_migrations_env
from delivery_svc.models import Base

run_migrations_env(Base.metadata)
