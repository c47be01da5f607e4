"""Refusing stale webhook deliveries, where something tells when the delivery was sent.

Neither sender dates its deliveries: Firecrawl signs the raw body only, and neither its headers
(``Content-Type``, the caller's own, ``X-Firecrawl-Signature``) nor its payload carry a time (read in its
webhook sender); changedetection.io sends a fixed token. Replays of a Firecrawl delivery are absorbed by
idempotency instead: its ``webhookId`` names the jobs it queues, so a replay finds them and queues nothing.

``X-Crawldex-Timestamp`` (unix seconds, or RFC 3339 with an offset) is for senders and proxies that can
date a delivery: one further than the window from now, in the past or the future, is refused with 401. The
header is not covered by Firecrawl's signature, so it stops deliveries held up or re-sent by relays that keep
headers, not an attacker who can write headers (idempotency and the signature are the defence there).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from crawldex.webhooks import WebhookRejectedError

TIMESTAMP_HEADER = "X-Crawldex-Timestamp"
_UNIX_SECONDS = re.compile(r"^\d{1,11}(\.\d{1,9})?$")


class StaleDeliveryError(WebhookRejectedError):
    """The delivery's timestamp is outside the replay window."""

    def __init__(self, reason: str) -> None:
        super().__init__(401, reason)


def parse_timestamp(value: str) -> datetime:
    """Unix seconds (``1767225600``, decimals allowed) or RFC 3339 (``2026-01-01T00:00:00Z``)."""
    text = value.strip()
    if _UNIX_SECONDS.match(text):
        return datetime.fromtimestamp(float(text), UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise WebhookRejectedError(
            400, f"{TIMESTAMP_HEADER} must be unix seconds or an RFC 3339 time with an offset (…Z or …+00:00)"
        )
    return parsed


def check_delivery_time(
    header_value: str | None, *, window_seconds: int, now: datetime | None = None
) -> None:
    """Refuse a delivery dated more than ``window_seconds`` from ``now``; no header, or a window of 0: accept."""
    if window_seconds <= 0 or header_value is None:
        return
    sent_at = parse_timestamp(header_value)
    age = ((now or datetime.now(UTC)) - sent_at).total_seconds()
    if age > window_seconds:
        raise StaleDeliveryError(
            f"delivery sent {age:.0f} s ago ({TIMESTAMP_HEADER}); deliveries older than {window_seconds} s are "
            "refused (CRAWLDEX_WEBHOOK_REPLAY_WINDOW_SECONDS)"
        )
    if -age > window_seconds:
        raise StaleDeliveryError(
            f"{TIMESTAMP_HEADER} is {-age:.0f} s in the future; more than {window_seconds} s of clock skew is "
            "refused (CRAWLDEX_WEBHOOK_REPLAY_WINDOW_SECONDS)"
        )
