"""Alembic environment of the gateway: the shared runner (services.common.migrations) does the work."""

from services.common.migrations import run_migrations_in_env

run_migrations_in_env()
