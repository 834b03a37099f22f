"""Alembic environment of content: the shared runner (services.common.persistence.migrations) does the work."""

from services.common.persistence.migrations import run_migrations_in_env

run_migrations_in_env()
