"""The GCRA arithmetic of the rate limiter that needs no Redis: intervals, capacity, and what a script
answer means in whole requests and seconds. The script itself runs against Redis in
tests/integration/test_rate_limits.py."""

from __future__ import annotations

import pytest

from crawldex.adapters.rate_limit import MICROSECONDS, RateDecision, RateLimit


def test_interval_and_capacity_follow_the_rate_and_burst() -> None:
    limit = RateLimit(per_minute=600, burst=100)
    assert limit.interval_us == 100_000  # 0.1 s per request
    assert limit.capacity_us == 10 * MICROSECONDS  # a full bucket refills in 10 s
    assert limit.policy == "100;w=10"


def test_interval_rounds_up_so_the_rate_is_never_exceeded() -> None:
    limit = RateLimit(per_minute=7, burst=1)
    assert limit.interval_us == 8_571_429  # 60 s / 7 = 8.5714285… s, rounded up
    assert limit.interval_us * 7 >= 60 * MICROSECONDS
    assert RateLimit(per_minute=1, burst=3).policy == "3;w=180"


@pytest.mark.parametrize(("per_minute", "burst"), [(0, 1), (1, 0), (-5, 10)])
def test_a_limit_needs_a_positive_rate_and_burst(per_minute: int, burst: int) -> None:
    with pytest.raises(ValueError, match="per_minute >= 1 and burst >= 1"):
        RateLimit(per_minute=per_minute, burst=burst)


def test_first_request_of_a_full_bucket_leaves_burst_minus_one() -> None:
    limit = RateLimit(per_minute=60, burst=5)  # one a second
    decision = RateDecision.from_script(limit, True, full_in_us=limit.interval_us, admit_in_us=0)
    assert decision == RateDecision(
        allowed=True, limit=5, remaining=4, retry_after_seconds=0, reset_seconds=1
    )


def test_last_request_of_the_burst_leaves_nothing_and_resets_when_refilled() -> None:
    limit = RateLimit(per_minute=60, burst=5)
    decision = RateDecision.from_script(limit, True, full_in_us=limit.capacity_us, admit_in_us=0)
    assert (decision.remaining, decision.reset_seconds) == (0, 5)


def test_partly_refilled_bucket_counts_whole_requests_only() -> None:
    limit = RateLimit(per_minute=60, burst=5)
    # 2.5 intervals of room: two whole requests may follow at once, not three.
    decision = RateDecision.from_script(limit, True, full_in_us=2_500_000, admit_in_us=0)
    assert (decision.remaining, decision.reset_seconds) == (2, 3)


def test_refusal_says_when_to_retry_in_whole_seconds_never_zero() -> None:
    limit = RateLimit(per_minute=60, burst=5)
    refused = RateDecision.from_script(limit, False, full_in_us=4_999_000, admit_in_us=1_000)
    assert refused == RateDecision(
        allowed=False, limit=5, remaining=0, retry_after_seconds=1, reset_seconds=5
    )
    later = RateDecision.from_script(limit, False, full_in_us=5_000_000, admit_in_us=2_000_001)
    assert later.retry_after_seconds == 3
