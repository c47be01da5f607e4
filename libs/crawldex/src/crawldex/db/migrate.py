"""Apply Alembic migrations programmatically (the API at start-up, the chart's migration Job, tests)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from crawldex.config import get_settings
from crawldex.db.database import create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed number: all crawldex processes that migrate take the same PostgreSQL advisory lock so
# replicas starting together do not race each other through the same revisions.
_ADVISORY_LOCK_KEY = 0x6372_6177


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            is_pg = conn.dialect.name == "postgresql"
            if is_pg:
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
            try:
                await conn.run_sync(_upgrade, revision)
                await conn.commit()
            finally:
                if is_pg:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_KEY})
                    await conn.commit()
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description="Apply crawldex database migrations.")
    parser.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args()
    asyncio.run(upgrade(get_settings().effective_database_url, args.revision))


if __name__ == "__main__":
    main()
