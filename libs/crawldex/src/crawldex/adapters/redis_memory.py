"""How full Redis is: new work is refused before Redis reaches its ``maxmemory``.

At its ``maxmemory`` (with the ``noeviction`` policy the queues need) Redis refuses every write that could add
memory, the transactions in which workers register, take and finish jobs included, so the queues would stall
instead of draining. New work from outside (webhooks, ``/api/index``, change notifications, imports) is
therefore refused while Redis's used memory is above a share of its ``maxmemory``
(``CRAWLDEX_REDIS_MEMORY_REFUSE_RATIO``), leaving the rest to the workers, whose jobs free memory as they
finish; what the workers queue to finish work already taken (a re-scrape's page) is not. ``INFO memory`` is
read at most every ``CRAWLDEX_REDIS_MEMORY_CHECK_SECONDS`` per process, when an enqueue finds the last
reading that old; a Redis without a ``maxmemory``, or one that may not run ``INFO`` (an ACL that denies it,
a proxy without it), is never refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from crawldex.errors import DependencyUnavailableError

log = logging.getLogger(__name__)


class RedisFullError(DependencyUnavailableError):
    """Redis is too near its maxmemory to take more work; retry once the workers have drained some."""

    def __init__(self, used_bytes: int, maxmemory_bytes: int) -> None:
        super().__init__(
            "redis",
            f"{used_bytes / maxmemory_bytes:.0%} of its maxmemory ({maxmemory_bytes} bytes) is used; new work "
            "is refused until the workers have drained the queues",
        )


def memory_usage(info: Mapping[str, Any]) -> tuple[int, int]:
    """Redis's used memory and its maxmemory (0: none), in bytes, from an ``INFO memory`` answer."""
    return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))


class RedisMemoryGauge:
    """Redis's used memory against its maxmemory, read now and then; `check` raises `RedisFullError` while
    it is above ``refuse_ratio`` of it."""

    # What a Redis answers when INFO may not be run at all: an ACL's NOPERM, a proxy's unknown command. Any
    # other refusal (BUSY, MASTERDOWN, TRYAGAIN in a failover) passes: the next reading tries again.
    _NEVER_ANSWERS = ("unknown command", "unknown subcommand")

    def __init__(
        self,
        connection: redis.Redis,
        async_connection: aioredis.Redis | None,
        *,
        refuse_ratio: float,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._async_connection = async_connection
        self._refuse_ratio = refuse_ratio
        self._interval = interval_seconds
        self._clock = clock
        self._next_read = 0.0
        self._enabled = True
        self._read_once = False
        self._warned_unbounded = False
        # (used, maxmemory) of a reading above the ratio, else None. Each refusal raises an error of its own:
        # one raised again and again would keep every refused request's frames, and its pages, alive.
        self._full: tuple[int, int] | None = None
        self._reading: asyncio.Task[None] | None = None  # the read in flight, kept from garbage collection

    def check(self) -> None:
        """Raise `RedisFullError` if Redis is too full, reading it first on the synchronous connection if
        the last reading is older than the interval. Redis's own errors propagate."""
        if self._due():
            self._read()
        self._raise_if_full()

    async def check_async(self) -> None:
        """`check` for an event loop. A reading older than the interval is taken again in a task of its own.
        While the last reading said there was room, no request waits for it: requests keep their order and
        none pays a round trip more. Before the first reading, and while refusing, requests wait for the
        reading in flight (in the order they came): none is refused on an old reading, nor let in on none."""
        if self._due():
            if self._async_connection is None:
                await asyncio.to_thread(self._read)
            else:
                self._reading = asyncio.get_running_loop().create_task(
                    self._read_async(self._async_connection)
                )
        reading = self._reading
        if (self._full is not None or not self._read_once) and reading is not None and not reading.done():
            await asyncio.shield(reading)  # a request cancelled while it waits leaves the reading be
        self._raise_if_full()

    def _raise_if_full(self) -> None:
        if self._full is not None:
            raise RedisFullError(*self._full)

    def _read(self) -> None:
        try:
            self._record(self._connection.info("memory"))
        except redis.ResponseError as exc:
            self._refused(exc)

    async def _read_async(self, connection: aioredis.Redis) -> None:
        try:
            self._record(await connection.info("memory"))
        except redis.ResponseError as exc:
            self._refused(exc)
        except redis.RedisError as exc:  # Redis away: the enqueue that follows reports it
            log.debug("could not read redis's memory: %s", exc)

    def _due(self) -> bool:
        # Set before the read: requests that arrive while it is out keep using the last reading.
        now = self._clock()
        if not self._enabled or now < self._next_read:
            return False
        self._next_read = now + self._interval
        return True

    def _record(self, info: Mapping[str, Any]) -> None:
        self._read_once = True
        used, maxmemory = memory_usage(info)
        if maxmemory == 0 and not self._warned_unbounded:
            self._warned_unbounded = True
            log.warning(
                "redis has no maxmemory: new work is not refused before it is full, and a backlog can grow "
                "until its memory limit kills it with the queues; give it one (docs/deployment.md)"
            )
        if maxmemory > 0 and used > self._refuse_ratio * maxmemory:
            if self._full is None:
                log.warning("redis is %.0f%% full; refusing new work", 100 * used / maxmemory)
            self._full = (used, maxmemory)
        else:
            if self._full is not None:
                log.warning("redis is %.0f%% full again; taking new work", 100 * used / max(maxmemory, 1))
            self._full = None

    def _refused(self, exc: redis.ResponseError) -> None:
        """INFO refused: for good (no permission, no such command) the check stops, new work no longer held
        back; otherwise (Redis busy, failing over) the last reading stands until the next."""
        if isinstance(exc, redis.exceptions.NoPermissionError) or str(exc).lower().startswith(
            self._NEVER_ANSWERS
        ):
            self._enabled = False
            self._full = None
            log.warning("redis refused INFO (%s): new work is no longer held back before redis is full", exc)
        else:
            log.warning("could not read redis's memory (%s); the last reading stands", exc)
