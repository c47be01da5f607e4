"""Retry waits are spread per job, so the jobs one outage failed do not all come back at the same second."""

from __future__ import annotations

import itertools

import redis

from crawldex.adapters.queue import JobQueue
from crawldex.config import Settings


def queue_with(draws: list[float], jitter: float) -> JobQueue:
    values = itertools.cycle(draws)
    # The client connects lazily; nothing here talks to Redis.
    return JobQueue(redis.Redis(), Settings(job_retry_jitter=jitter), random=lambda: next(values))


def test_jitter_scales_all_intervals_of_a_job_by_one_factor() -> None:
    queue = queue_with([0.0, 1.0, 0.5], jitter=0.5)
    assert queue._jittered([10, 30, 60]) == [5, 15, 30]  # factor 0.5
    assert queue._jittered([10, 30, 60]) == [15, 45, 90]  # factor 1.5
    assert queue._jittered([10, 30, 60]) == [10, 30, 60]  # factor 1.0


def test_no_jitter_keeps_the_configured_waits_and_never_below_one_second() -> None:
    assert queue_with([0.9], jitter=0.0)._jittered([1, 2, 4]) == [1, 2, 4]
    assert queue_with([0.0], jitter=1.0)._jittered([1, 10]) == [1, 1]
