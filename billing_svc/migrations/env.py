"""Alembic environment of billing_svc: the kit runs it on the connection Database.migrate gives."""

from billing_svc.models import Base
from bizmsg.kit.storage import run_migrations_env

run_migrations_env(Base.metadata)
