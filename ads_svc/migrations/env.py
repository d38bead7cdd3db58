"""Alembic environment of the ads service (the kit runs it on the service's connection)."""

from ads_svc.models import Base
from bizmsg.kit.storage import run_migrations_env

run_migrations_env(Base.metadata)
