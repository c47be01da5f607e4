"""Per-document write lock in Redis, so two workers never interleave the writes of one URL.

The lock is a lease: it expires ``lease_seconds`` after its last renewal, and its holder renews it from a
background task while it writes. A worker killed mid-write (SIGKILL, OOM) leaves a lock that frees itself
within one lease, about when its job is re-run, instead of blocking the document for a whole job timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from crawldex.errors import DependencyUnavailableError

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 3  # a late renewal or two is not a lost lock


class RedisDocumentLock:
    def __init__(self, connection: aioredis.Redis, *, lease_seconds: float, wait_seconds: float) -> None:
        self._redis = connection
        self._lease = lease_seconds
        self._wait = wait_seconds

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        return self.hold_many([key])

    @asynccontextmanager
    async def hold_many(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Hold the locks of several documents (a batch of pages), taken one by one in key order, so two
        writers of overlapping batches never each hold a lock the other waits for; renewed together."""
        held: list[tuple[Lock, str]] = []
        try:
            for key in sorted(set(keys)):
                lock = self._redis.lock(
                    f"crawldex:lock:doc:{key}", timeout=self._lease, blocking_timeout=self._wait
                )
                try:
                    acquired = await lock.acquire()
                except RedisError as exc:
                    raise DependencyUnavailableError("redis", f"document lock: {exc}") from exc
                if not acquired:
                    raise DependencyUnavailableError(
                        "redis", f"document {key} stayed locked for {self._wait}s"
                    )
                held.append((lock, key))
            renewing = asyncio.create_task(self._renew(held))
            try:
                yield
            finally:
                renewing.cancel()
                with suppress(asyncio.CancelledError):
                    await renewing
        finally:
            # LockError: it expired while held, and the next writer already owns it.
            await asyncio.gather(*(lock.release() for lock, _ in held), return_exceptions=True)

    async def _renew(self, held: list[tuple[Lock, str]]) -> None:
        while held:
            await asyncio.sleep(self._lease / RENEWALS_PER_LEASE)
            renewed = await asyncio.gather(*(lock.reacquire() for lock, _ in held), return_exceptions=True)
            for (lock, key), result in zip(list(held), renewed, strict=True):
                if isinstance(result, (LockError, RedisError)):
                    # Writes are idempotent, so finishing is safe; another writer may now overlap this one.
                    log.warning(
                        "lost the lock of document %s (%s); finishing the write without it", key, result
                    )
                    held.remove((lock, key))
