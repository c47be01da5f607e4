"""Engine and sessions. One engine per event loop: asyncpg connections belong to the loop that made them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from crawldex.errors import DependencyUnavailableError

# Errors that mean "the database is not there right now", as opposed to a bad statement. SQLAlchemy's
# TimeoutError (no free connection in the pool within its timeout: every one is busy) is not the builtin.
_UNREACHABLE = (OperationalError, InterfaceError, OSError, TimeoutError, PoolTimeoutError)
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


def create_engine(url: str, *, pool_size: int = 10, autocommit: bool = False) -> AsyncEngine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if autocommit:
        kwargs["isolation_level"] = "AUTOCOMMIT"
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


@contextmanager
def _unreachable_as_unavailable() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if is_unreachable(exc):
            raise DependencyUnavailableError("database", f"{type(exc).__name__}: {exc}") from exc
        raise


def _is_memory_database(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


class Database:
    def __init__(self, engine: AsyncEngine, autocommit_engine: AsyncEngine | None = None) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._autocommit_engine = autocommit_engine

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 10) -> Database:
        # A pool of its own keeps the statement connections in autocommit: checked out, they are pinged
        # with one round trip. A connection of the transactional pool is pinged inside a transaction
        # (BEGIN, ping, ROLLBACK), three. An in-memory SQLite database exists once per connection, so it
        # cannot be shared by two pools.
        autocommit = (
            None if _is_memory_database(url) else create_engine(url, pool_size=pool_size, autocommit=True)
        )
        return cls(create_engine(url, pool_size=pool_size), autocommit)

    def insert(self) -> Any:
        """The dialect's INSERT, which has ON CONFLICT (PostgreSQL; SQLite in the embedded mode)."""
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert
        return sqlite.insert

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A short transaction: committed on success, rolled back on error.

        A database that cannot be reached raises `DependencyUnavailableError` (the API answers 503,
        a job fails and is retried); any other database error propagates as it is.
        """
        with _unreachable_as_unavailable():
            async with self._sessions() as session, session.begin():
                yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """`session` for Core statements: a connection in a transaction, without an ORM session's
        bookkeeping (a bulk write through a session goes through the ORM's bulk-insert path). Errors as in
        `session`."""
        with _unreachable_as_unavailable():
            async with self.engine.begin() as conn:
                yield conn

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for work of one statement (a lookup, an upsert, a compare-and-set), which
        commits on its own: no BEGIN and COMMIT around it, two round trips fewer than `session`.

        Work of several statements that must hold together belongs in `session`. Errors as in `session`.
        """
        with _unreachable_as_unavailable():
            if self._autocommit_engine is not None:
                async with self._autocommit_engine.connect() as conn:
                    yield conn
            else:
                async with self.engine.connect() as conn:
                    yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def many(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement run over many rows (one ``execute`` with a list of parameter
        sets) that must apply whole or not at all.

        asyncpg sends such an executemany in one round trip as one implicit transaction (all rows or none),
        so on PostgreSQL this is `statement`: no BEGIN and COMMIT of its own, and its connection pinged with
        one round trip instead of three. Other drivers (SQLite in the embedded mode) commit each row of an
        executemany on its own outside a transaction, so there it is `transaction`. Errors as in `session`.
        """
        if self.engine.dialect.driver == "asyncpg":
            async with self.statement() as conn:
                yield conn
        else:
            async with self.transaction() as conn:
                yield conn

    async def health(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # driver-specific errors
            raise DependencyUnavailableError("database", f"{type(exc).__name__}: {exc}") from exc

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._autocommit_engine is not None:
            await self._autocommit_engine.dispose()
