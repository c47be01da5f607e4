"""Engine and sessions. One engine per event loop: asyncpg connections belong to the loop that made them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from crawldex.errors import DependencyUnavailableError

# Errors that mean "the database is not there right now", as opposed to a bad statement.
_UNREACHABLE = (OperationalError, InterfaceError, OSError, TimeoutError)
# SQLSTATE classes of the same: 08 connection exception, 53 insufficient resources (too many connections),
# 57P operator intervention (shutting down, crashed, starting up: "cannot connect now"). asyncpg raises these
# as its own classes, which SQLAlchemy wraps in a plain DBAPIError.
_UNREACHABLE_SQLSTATES = ("08", "53", "57P")


def is_unreachable(exc: BaseException) -> bool:
    """Whether a database error means the server cannot be used right now (retry later), not a bad statement."""
    if isinstance(exc, _UNREACHABLE):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        return isinstance(sqlstate, str) and sqlstate.startswith(_UNREACHABLE_SQLSTATES)
    return False


def create_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while an in-process consumer writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def connect(cls, url: str) -> Database:
        return cls(create_engine(url))

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A short transaction: committed on success, rolled back on error.

        A database that cannot be reached raises `DependencyUnavailableError` (the API answers 503,
        a job fails and is retried); any other database error propagates as it is.
        """
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except Exception as exc:
            if is_unreachable(exc):
                raise DependencyUnavailableError("database", f"{type(exc).__name__}: {exc}") from exc
            raise

    async def health(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # driver-specific errors
            raise DependencyUnavailableError("database", f"{type(exc).__name__}: {exc}") from exc

    async def dispose(self) -> None:
        await self.engine.dispose()
