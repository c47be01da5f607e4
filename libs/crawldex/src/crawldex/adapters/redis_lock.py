"""Per-document write lock in Redis, so two workers never interleave the writes of one URL.

The lock is a lease: it expires ``lease_seconds`` after its last renewal, and its holder renews it from a
background task while it writes. A worker killed mid-write (SIGKILL, OOM) leaves a lock that frees itself
within one lease, about when its job is re-run, instead of blocking the document for a whole job timeout.

A batch's locks are taken, renewed and released by one script call each (a round trip, not one per
document): redis-py's `Lock` is one key per call, and a batch of eight pages would pay sixteen round trips.

A holder that stalls (a renewal stuck on a dead connection, a process paused) can outlive its lease while
another writer takes the lock and writes a newer version. So the holder checks its `Lease` before each
write: unless a renewal (or the acquire) that started less than two thirds of a lease ago succeeded, and
none found a lock taken over, the write is refused (`LockLostError`, a retried job). The remaining third
is the time a write may take after its check.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from crawldex.errors import DependencyUnavailableError

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 3  # a late renewal or two is not a lost lock
RETRY_SECONDS = 0.1  # how often a writer waiting for a document's lock tries again
KEY_PREFIX = "crawldex:lock:doc:"

# Takes KEYS in their order with token ARGV[1] for ARGV[2] ms, stopping at the first held by another
# writer; returns how many it took. Taking them in order is what keeps two batches from deadlocking.
_ACQUIRE = """
for i, key in ipairs(KEYS) do
  if not redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then return i - 1 end
end
return #KEYS
"""
# Extends each of KEYS still held with token ARGV[1] to ARGV[2] ms; returns 1 or 0 for each key.
_RENEW = """
local held = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""
# Deletes each of KEYS still held with token ARGV[1]; a lock that expired may be another writer's now.
_RELEASE = """
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
"""


class LockLostError(DependencyUnavailableError):
    """A document's lock may be another writer's now: the write is not made, and the job is retried."""

    def __init__(self, message: str) -> None:
        super().__init__("redis", message)


class RedisLease:
    """What a holder knows of its locks: until when they surely last, and whether one was taken over."""

    def __init__(self, lease_seconds: float, started: float) -> None:
        self._lease = lease_seconds
        self._confirmed_at = started
        self.lost: list[str] = []

    def confirmed(self, started: float) -> None:
        """A renewal sent at ``started`` (monotonic) succeeded: the locks last a lease from then."""
        self._confirmed_at = max(self._confirmed_at, started)

    def check(self) -> None:
        if self.lost:
            raise LockLostError(f"lost the lock of document {self.lost[0]} to another writer")
        age = time.monotonic() - self._confirmed_at
        if age > self._lease * 2 / 3:
            raise LockLostError(
                f"the document locks were last renewed {age:.1f}s ago (lease {self._lease:g}s); not writing"
            )


class RedisDocumentLock:
    def __init__(self, connection: aioredis.Redis, *, lease_seconds: float, wait_seconds: float) -> None:
        self._lease = lease_seconds
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._wait = wait_seconds
        self._acquire = connection.register_script(_ACQUIRE)
        self._renew_script = connection.register_script(_RENEW)
        self._release = connection.register_script(_RELEASE)

    def hold(self, key: str) -> AbstractAsyncContextManager[RedisLease]:
        return self.hold_many([key])

    @asynccontextmanager
    async def hold_many(self, keys: Sequence[str]) -> AsyncIterator[RedisLease]:
        """Hold the locks of several documents (a batch of pages), taken in key order, so two writers of
        overlapping batches never each hold a lock the other waits for; renewed together. Check the
        lease it gives before each write."""
        token = uuid.uuid4().hex
        ordered = [KEY_PREFIX + key for key in sorted(set(keys))]
        held: list[str] = []
        lease = RedisLease(math.inf, time.monotonic()) if not ordered else None  # no lock: none to lapse
        renewing: asyncio.Task[None] | None = None
        try:
            deadline = time.monotonic() + self._wait
            while len(held) < len(ordered):
                wanted = ordered[len(held) :]
                sent = time.monotonic()
                taken = int(await self._call(self._acquire, wanted, token))
                held.extend(wanted[:taken])
                if taken and lease is None:
                    # Renewed from the first lock taken: waiting for the others must not let it lapse.
                    lease = RedisLease(self._lease, sent)
                    renewing = asyncio.create_task(self._renew(held, token, lease))
                if taken < len(wanted):
                    if time.monotonic() >= deadline:
                        busy = wanted[taken].removeprefix(KEY_PREFIX)
                        raise DependencyUnavailableError(
                            "redis", f"document {busy} stayed locked for {self._wait}s"
                        )
                    await asyncio.sleep(min(RETRY_SECONDS, max(0.0, deadline - time.monotonic())))
            assert lease is not None
            yield lease
        finally:
            if renewing is not None:
                renewing.cancel()
                with suppress(asyncio.CancelledError):
                    await renewing
            # Every key, not only those known held: an acquire cut short (cancelled) may have taken some.
            # The token is this hold's own, so a lock another writer holds is never touched.
            if ordered:
                await self._release_all(ordered, token)

    async def _release_all(self, keys: list[str], token: str) -> None:
        try:
            await self._call(self._release, keys, token)
        except DependencyUnavailableError as exc:
            # Each lock frees itself within a lease; the write itself is done (or failed on its own).
            log.warning("could not release the locks of %d documents: %s", len(keys), exc)

    async def _call(self, script: AsyncScript, keys: list[str], token: str) -> Any:
        try:
            return await script(keys=keys, args=[token, self._lease_ms])
        except RedisError as exc:
            raise DependencyUnavailableError("redis", f"document lock: {exc}") from exc

    async def _renew(self, held: list[str], token: str, lease: RedisLease) -> None:
        """Renew the locks in ``held`` every third of a lease, but those found taken over; the holder may
        still be adding to it (taking the rest of its locks)."""
        while True:
            await asyncio.sleep(self._lease / RENEWALS_PER_LEASE)
            renewed = [key for key in held if key.removeprefix(KEY_PREFIX) not in lease.lost]
            if not renewed:
                continue
            sent = time.monotonic()
            try:
                still_held = await self._call(self._renew_script, renewed, token)
            except DependencyUnavailableError as exc:
                log.warning("could not renew the locks of %d documents: %s", len(renewed), exc)
                continue  # the next renewal may get through before the lease ends
            for key, kept in zip(renewed, still_held, strict=True):
                if not kept:
                    document = key.removeprefix(KEY_PREFIX)
                    log.warning("lost the lock of document %s; its writes left undone are refused", document)
                    lease.lost.append(document)
            if not lease.lost:
                lease.confirmed(sent)
