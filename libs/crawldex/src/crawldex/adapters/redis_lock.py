"""Per-document write lock in Redis, so two workers never interleave the writes of one URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import redis.asyncio as aioredis
from redis.exceptions import LockError, RedisError

from crawldex.errors import DependencyUnavailableError


class RedisDocumentLock:
    def __init__(self, connection: aioredis.Redis, *, timeout_seconds: float, wait_seconds: float) -> None:
        self._redis = connection
        self._timeout = timeout_seconds  # the lock expires if its holder dies
        self._wait = wait_seconds

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._redis.lock(
            f"crawldex:lock:doc:{key}", timeout=self._timeout, blocking_timeout=self._wait
        )
        try:
            acquired = await lock.acquire()
        except RedisError as exc:
            raise DependencyUnavailableError("redis", f"document lock: {exc}") from exc
        if not acquired:
            raise DependencyUnavailableError("redis", f"document {key} stayed locked for {self._wait}s")
        try:
            yield
        finally:
            # LockError: it expired while held, and the next writer already owns it.
            with suppress(LockError):
                await lock.release()
