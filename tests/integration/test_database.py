"""`Database.many`: one statement over many rows applies whole or not at all, on PostgreSQL (asyncpg's
executemany is one implicit transaction) and on SQLite (a transaction of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from crawldex.db.database import Database
from crawldex.errors import DependencyUnavailableError

ROWS = [{"id": 1, "size": 1}, {"id": 2, "size": 2}, {"id": 3, "size": 500}, {"id": 4, "size": 4}]


@pytest.fixture(params=["postgresql", "sqlite"])
async def database(request: pytest.FixtureRequest, fresh_database: str, tmp_path: Path) -> Database:
    url = fresh_database if request.param == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    db = Database.connect(url)
    async with db.statement() as conn:
        await conn.execute(
            text("CREATE TABLE sizes (id integer PRIMARY KEY, size integer CHECK (size < 100))")
        )
    return db


async def test_rows_written_together_are_all_written_or_none(database: Database) -> None:
    insert = text("INSERT INTO sizes (id, size) VALUES (:id, :size)")
    try:
        with pytest.raises(IntegrityError):  # the third row breaks the CHECK
            async with database.many() as conn:
                await conn.execute(insert, ROWS)
        async with database.many() as conn:
            await conn.execute(insert, [row for row in ROWS if row["size"] < 100])
        async with database.statement() as conn:
            sizes = (await conn.execute(text("SELECT size FROM sizes ORDER BY id"))).scalars().all()
        assert sizes == [1, 2, 4]
    finally:
        async with database.statement() as conn:
            await conn.execute(text("DROP TABLE sizes"))
        await database.dispose()


async def test_a_pool_with_no_free_connection_is_unavailable_not_a_bug(fresh_database: str) -> None:
    """Every connection busy past the pool's timeout: a 503 and a retried job, like an outage, not a 500."""
    engine = create_async_engine(fresh_database, pool_size=1, max_overflow=0, pool_timeout=0.2)
    database = Database(engine)
    try:
        async with engine.connect():  # holds the pool's only connection
            with pytest.raises(DependencyUnavailableError):
                async with database.session() as session:
                    await session.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
