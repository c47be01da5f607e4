"""Firecrawl webhooks: signature check over the raw body, then the v0/v1/v2 payload shapes.

The payload is read leniently (Firecrawl's metadata values may be strings or lists, v0 says
``jobId`` and may send ``content``), but never guessed: a page without a usable URL is reported as
failed, not indexed under a made-up identity.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from crawldex.models import PageDocument, utc_now
from crawldex.urls import canonicalize_url
from crawldex.webhooks import WebhookRejectedError, load_json

__all__ = [
    "FirecrawlDelivery",
    "WebhookRejectedError",
    "parse_delivery",
    "read_documents",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Firecrawl-Signature"
PAGE_EVENTS = frozenset({"crawl.page", "batch_scrape.page"})
MONITOR_EVENT = "monitor.page"
MONITOR_ACTIONS = frozenset({"changed", "removed"})
MAX_EVENT_TYPE_LENGTH = 64  # what crawl_events.event_type holds; Firecrawl's longest is about 25
_SIGNATURE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


def verify_signature(secret: str, body: bytes, header_value: str | None) -> None:
    """Check ``X-Firecrawl-Signature: sha256=<hex HMAC-SHA256(secret, body)>`` in constant time."""
    if not header_value:
        raise WebhookRejectedError(401, f"missing {SIGNATURE_HEADER} header")
    match = _SIGNATURE.match(header_value.strip())
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    # Compare even when the format is wrong, so timing does not tell a malformed header from a wrong one.
    provided = match.group(1).lower() if match else "0" * 64
    if not hmac.compare_digest(provided, expected) or match is None:
        raise WebhookRejectedError(401, f"invalid {SIGNATURE_HEADER} signature")


def sign(secret: str, body: bytes) -> str:
    """The header value Firecrawl sends for ``body`` (used by tests and tools)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class FailedPage:
    url: str | None
    error: str


@dataclass(frozen=True)
class MonitorChange:
    """Firecrawl's own change tracking (`monitor.page`): a watched page changed or was removed."""

    url: str
    status: str  # "changed" or "removed"; other statuses ("same", "new") need nothing


@dataclass
class FirecrawlDelivery:
    event_type: str
    crawl_id: str | None
    webhook_id: str | None
    success: bool
    error: str | None
    pages: list[PageDocument] = field(default_factory=list)
    failed: list[FailedPage] = field(default_factory=list)
    monitor_changes: list[MonitorChange] = field(default_factory=list)

    @property
    def is_page_event(self) -> bool:
        return self.event_type in PAGE_EVENTS


def _text(value: Any) -> str | None:
    """Firecrawl metadata values are strings or lists of strings; take the first non-empty string."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list):
        for item in value:
            text = _text(item)
            if text:
                return text
    return None


def _optional_str(obj: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise WebhookRejectedError(422, f"field {key!r} must be a string")
        if value:
            return value
    return None


def parse_delivery(body: bytes, *, received_at: datetime | None = None) -> FirecrawlDelivery:
    payload = load_json(body)
    if not isinstance(payload, dict):
        raise WebhookRejectedError(422, "body must be a JSON object")
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        raise WebhookRejectedError(422, "field 'type' is required and must be a string")
    if len(event_type.strip()) > MAX_EVENT_TYPE_LENGTH:
        raise WebhookRejectedError(422, f"field 'type' is longer than {MAX_EVENT_TYPE_LENGTH} characters")
    success = payload.get("success", True)
    if not isinstance(success, bool):
        raise WebhookRejectedError(422, "field 'success' must be a boolean")
    data = payload.get("data") or []
    if not isinstance(data, list):
        raise WebhookRejectedError(422, "field 'data' must be an array")
    error = payload.get("error")
    delivery = FirecrawlDelivery(
        event_type=event_type.strip(),
        crawl_id=_optional_str(payload, "id", "jobId"),
        webhook_id=_optional_str(payload, "webhookId"),
        success=success,
        error=error if isinstance(error, str) else (json.dumps(error) if error is not None else None),
    )
    if delivery.event_type == MONITOR_EVENT:
        delivery.monitor_changes.extend(_monitor_changes(data))
        return delivery
    if not delivery.is_page_event:
        return delivery
    received = received_at or utc_now()
    for position, item in enumerate(data):
        _read_page(delivery, item, position, received)
    return delivery


def read_documents(
    items: list[Any], *, crawl_id: str | None, source: str, received_at: datetime | None = None
) -> tuple[list[PageDocument], list[FailedPage]]:
    """Firecrawl documents from elsewhere than a webhook (a crawl's results, read back), read by the same
    rules as a page event's ``data``: the indexable pages, and those that are not, with the reason."""
    delivery = FirecrawlDelivery(
        event_type=source, crawl_id=crawl_id, webhook_id=None, success=True, error=None
    )
    received = received_at or utc_now()
    for position, item in enumerate(items):
        _read_page(delivery, item, position, received)
    return delivery.pages, delivery.failed


def _read_page(delivery: FirecrawlDelivery, item: Any, position: int, received_at: datetime) -> None:
    if not isinstance(item, dict):
        delivery.failed.append(FailedPage(None, f"data[{position}] is not an object"))
        return
    raw_metadata = item.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    url = _text(metadata.get("url")) or _text(metadata.get("sourceURL")) or _text(item.get("source"))
    if not delivery.success:
        delivery.failed.append(FailedPage(url, delivery.error or "Firecrawl reported the page as failed"))
        return
    if url is None:
        delivery.failed.append(FailedPage(None, f"data[{position}] has no metadata.url or sourceURL"))
        return
    status = metadata.get("statusCode")
    if isinstance(status, int) and status >= 400:
        delivery.failed.append(FailedPage(url, f"page answered HTTP {status}"))
        return
    page_error = _text(metadata.get("error"))
    markdown = item.get("markdown") if isinstance(item.get("markdown"), str) else item.get("content")
    if not isinstance(markdown, str):
        delivery.failed.append(FailedPage(url, page_error or f"data[{position}] has no markdown"))
        return
    try:
        page = PageDocument(
            url=url,
            markdown=markdown,
            title=_text(metadata.get("title")) or _text(metadata.get("ogTitle")),
            description=_text(metadata.get("description")) or _text(metadata.get("ogDescription")),
            language=_text(metadata.get("language")),
            crawl_id=delivery.crawl_id,
            source=delivery.event_type,
            received_at=received_at,
        )
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        delivery.failed.append(FailedPage(url, f"data[{position}] is not indexable: {reasons}"))
        return
    delivery.pages.append(page)


def _monitor_changes(data: list[Any]) -> list[MonitorChange]:
    changes = []
    for item in data:
        if not isinstance(item, dict):
            continue
        url, status = _text(item.get("url")), _text(item.get("status"))
        if url and status and status.lower() in MONITOR_ACTIONS:
            try:
                canonicalize_url(url)
            except ValueError:
                continue
            changes.append(MonitorChange(url=url, status=status.lower()))
    return changes
