"""The replay window on X-Crawldex-Timestamp: formats, both edges, and switching it off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crawldex.webhooks import WebhookRejectedError
from crawldex.webhooks.replay import StaleDeliveryError, check_delivery_time, parse_timestamp

NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1795176000", datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)),
        (" 1795176000.25 ", datetime(2026, 11, 20, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2026-11-20T12:00:00Z", NOW),
        ("2026-11-20T13:30:00+01:30", NOW),
        ("2026-11-20T12:00:00.5+00:00", NOW + timedelta(milliseconds=500)),
    ],
)
def test_parses_unix_seconds_and_rfc3339(value: str, expected: datetime) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize("value", ["", "yesterday", "2026-11-20T12:00:00", "2026-11-20", "-5", "1e9", "0x10"])
def test_unreadable_or_offsetless_timestamps_are_bad_requests(value: str) -> None:
    with pytest.raises(WebhookRejectedError) as caught:
        parse_timestamp(value)
    assert caught.value.status_code == 400
    assert not isinstance(caught.value, StaleDeliveryError)
    assert "X-Crawldex-Timestamp" in caught.value.reason


def stamp(offset_seconds: float) -> str:
    return str((NOW + timedelta(seconds=offset_seconds)).timestamp())


@pytest.mark.parametrize("offset", [0, -300, 300, -299.5, 120])
def test_inside_the_window_is_accepted(offset: float) -> None:
    check_delivery_time(stamp(offset), window_seconds=300, now=NOW)


def test_older_than_the_window_is_refused_with_its_age() -> None:
    with pytest.raises(StaleDeliveryError) as caught:
        check_delivery_time(stamp(-301), window_seconds=300, now=NOW)
    assert caught.value.status_code == 401
    assert "301 s ago" in caught.value.reason
    assert "CRAWLDEX_WEBHOOK_REPLAY_WINDOW_SECONDS" in caught.value.reason


def test_further_in_the_future_than_the_window_is_refused() -> None:
    with pytest.raises(StaleDeliveryError, match="in the future"):
        check_delivery_time("2026-11-20T12:05:01Z", window_seconds=300, now=NOW)


def test_no_header_is_accepted_since_neither_sender_dates_its_deliveries() -> None:
    check_delivery_time(None, window_seconds=300, now=NOW)


def test_a_window_of_zero_ignores_the_header_even_unreadable() -> None:
    check_delivery_time(stamp(-86400), window_seconds=0, now=NOW)
    check_delivery_time("not a time", window_seconds=0, now=NOW)
