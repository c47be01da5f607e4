"""Request rate limits kept in Redis, so every ingest-api replica counts against the same budget.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket that stores one number per client):
a client may send ``burst`` requests at once, then one request every ``60 / per_minute`` seconds. Redis keeps
each client's *theoretical arrival time* (TAT) in microseconds; a request is admitted when admitting it
would not push the TAT more than ``burst`` intervals past now. One EVALSHA per request reads the clock
(Redis's ``TIME``, so replicas with skewed clocks agree), decides, stores the new TAT with an expiry, and
returns everything the HTTP answer needs (remaining requests, when to retry, when the bucket is full). The
algorithm is a Lua function (`GCRA_LUA_FUNCTION`), so that a script doing a request's own work in Redis can
count the request in the same round trip (`RateCharge`; the job queue's enqueue of a webhook's pages).

Why not a library: ``limits`` (the well-kept Python option) offers fixed, moving and sliding-window
counters whose ``hit`` answers only allowed-or-not; the remaining quota and the reset time need a second
call (``get_window_stats``), i.e. two round trips per request and a race between them, and none of its
strategies has a burst separate from the sustained rate. The whole algorithm here is the Lua script below
and its pure arithmetic (`RateLimit`, `RateDecision.from_script`), both unit-tested.

Redis failures are `DependencyUnavailableError`; what to do then (the ingest-api lets the request through)
is the caller's policy. After a failure the limiter does not ask Redis again for ``cooldown_seconds``, so an
unreachable Redis costs each request nothing rather than a connect timeout.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from crawldex.adapters.redis_client import async_client
from crawldex.errors import DependencyUnavailableError

KEY_PREFIX = "crawldex:ratelimit"
MICROSECONDS = 1_000_000

# `gcra(key, interval, capacity, now)`: key is the client's TAT key; interval (µs per request) and capacity
# (burst x interval, µs) are numbers or their strings; now in µs, or nil for the server's clock (tests drive
# the clock; production uses the server's). Returns {allowed (1/0), µs until the bucket is full again, µs
# until a request would be admitted (0 if allowed)}. A Lua function, so that a script doing a request's own
# work (the job queue's enqueue of a webhook's pages) can charge the request in the same round trip.
GCRA_LUA_FUNCTION = """
local function gcra(key, interval, capacity, now)
  interval = tonumber(interval)
  capacity = tonumber(capacity)
  if now then
    now = tonumber(now)
  else
    local clock = redis.call('TIME')
    now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local next_tat = tat + interval
  local admit_at = next_tat - capacity
  if admit_at > now then
    return {0, tat - now, admit_at - now}
  end
  redis.call('SET', key, string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
  return {1, next_tat - now, 0}
end
"""
# KEYS[1]: the client's TAT key. ARGV: interval, capacity, and optionally now (see `gcra`).
_GCRA_SCRIPT = GCRA_LUA_FUNCTION + "return gcra(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"


@dataclass(frozen=True)
class RateLimit:
    """``burst`` requests at once, then ``per_minute`` a minute."""

    per_minute: int
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute < 1 or self.burst < 1:
            raise ValueError(f"a rate limit needs per_minute >= 1 and burst >= 1, not {self}")

    # Cached: read several times a request (the charge, its decision, the answer's headers).
    @functools.cached_property
    def interval_us(self) -> int:
        """Microseconds one request uses up; rounded up, so the rate never exceeds ``per_minute``."""
        return -(-60 * MICROSECONDS // self.per_minute)

    @functools.cached_property
    def capacity_us(self) -> int:
        return self.interval_us * self.burst

    @functools.cached_property
    def policy(self) -> str:
        """The ``RateLimit-Policy`` value: ``burst`` requests per the time a full bucket takes to refill."""
        return f"{self.burst};w={math.ceil(self.capacity_us / MICROSECONDS)}"


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int  # the burst: requests a client with a full bucket may send at once
    remaining: int  # requests that may be sent right now
    retry_after_seconds: int  # 0 when allowed; otherwise whole seconds until a request is admitted
    reset_seconds: int  # whole seconds until the bucket is full again

    @classmethod
    def from_script(cls, limit: RateLimit, allowed: bool, full_in_us: int, admit_in_us: int) -> RateDecision:
        """What the GCRA script's answer means for the client, in whole requests and whole seconds."""
        # The TAT sits `full_in_us` ahead of now; capacity minus that is the room left, in intervals.
        remaining = max(0, (limit.capacity_us - full_in_us) // limit.interval_us)
        return cls(
            allowed=allowed,
            limit=limit.burst,
            remaining=remaining if allowed else 0,
            retry_after_seconds=0 if allowed else max(1, math.ceil(admit_in_us / MICROSECONDS)),
            reset_seconds=math.ceil(full_in_us / MICROSECONDS),
        )


def bucket_key(name: str, identity: str) -> str:
    """The Redis key of ``identity``'s bucket under the limit called ``name``."""
    return f"{KEY_PREFIX}:{name}:{identity}"


@dataclass
class RateCharge:
    """One request to count in its client's bucket, counted once: by `RedisRateLimiter.charge`, or by the script
    that does the request's own work in Redis (`gcra` inside it: one round trip for both)."""

    key: str
    limit: RateLimit
    decision: RateDecision | None = None  # set once counted

    def counted(self, answer: Sequence[Any]) -> RateDecision:
        """Record what `gcra` answered for this request: ``{allowed, full_in_us, admit_in_us}``."""
        allowed, full_in_us, admit_in_us = (int(value) for value in answer)
        self.decision = RateDecision.from_script(self.limit, bool(allowed), full_in_us, admit_in_us)
        return self.decision


class RateLimitedError(Exception):
    """The request's charge was refused; none of its work was done."""

    def __init__(self, decision: RateDecision) -> None:
        super().__init__(f"rate limited: retry in {decision.retry_after_seconds} s")
        self.decision = decision


class RedisRateLimiter:
    """One GCRA bucket per (limit name, client identity) in Redis."""

    def __init__(self, connection: aioredis.Redis, *, cooldown_seconds: float = 1.0) -> None:
        self._redis = connection
        self._script = connection.register_script(_GCRA_SCRIPT)
        self._cooldown = cooldown_seconds
        self._unavailable_until = 0.0

    @classmethod
    def from_url(
        cls, url: str, *, timeout_seconds: float = 0.5, cooldown_seconds: float = 1.0
    ) -> RedisRateLimiter:
        """A client of its own: short timeouts and no retries, since a limiter must never hold a request up."""
        connection = async_client(
            url,
            socket_connect_timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(connection, cooldown_seconds=cooldown_seconds)

    async def hit(
        self, name: str, identity: str, limit: RateLimit, *, now_us: int | None = None
    ) -> RateDecision:
        """Count one request of ``identity`` against ``limit``; raises `DependencyUnavailableError`."""
        return await self.charge(RateCharge(bucket_key(name, identity), limit), now_us=now_us)

    async def charge(self, charge: RateCharge, *, now_us: int | None = None) -> RateDecision:
        """Count ``charge`` on its own; raises `DependencyUnavailableError`."""
        if time.monotonic() < self._unavailable_until:
            raise DependencyUnavailableError("redis", "rate limiter: Redis failed recently; not asked")
        limit = charge.limit
        args: list[Any] = [limit.interval_us, limit.capacity_us]
        if now_us is not None:
            args.append(now_us)
        try:
            answer = await self._script(keys=[charge.key], args=args)
        except (RedisError, OSError) as exc:
            self._unavailable_until = time.monotonic() + self._cooldown
            raise DependencyUnavailableError("redis", f"rate limiter: {type(exc).__name__}: {exc}") from exc
        return charge.counted(answer)

    async def aclose(self) -> None:
        await self._redis.aclose()
