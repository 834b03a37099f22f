"""`python -m scripts.stacklib.pg URL...`: create each PostgreSQL database that does not exist yet."""

from __future__ import annotations

import asyncio
import sys


async def ensure_database(url: str) -> bool:
    """Create the database named by `url` on its server unless it exists; True when it was created."""
    # Imported here: the launcher itself needs only the standard library and httpx.
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    target = make_url(url)
    name = target.database
    if not name:
        raise ValueError("the database URL names no database")
    admin = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            found = await connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
            if found:
                return False
            quoted = name.replace('"', '""')
            await connection.exec_driver_sql(f'CREATE DATABASE "{quoted}"')
            return True
    finally:
        await admin.dispose()


def main(argv: list[str]) -> int:
    """Create every database given; one line per failure."""
    status = 0
    for url in argv:
        try:
            asyncio.run(ensure_database(url))
        except Exception as error:
            print(f"cannot prepare database: {type(error).__name__}: {error}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
