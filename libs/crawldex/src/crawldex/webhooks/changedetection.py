"""changedetection.io notifications, in the two shapes it can send us.

- ``post://host/api/webhook/changedetection?+X-Crawldex-Token=...`` posts our own body template as it
  is (a JSON object with ``watch_url``/``url``, ``watch_uuid``/``uuid``, ``watch_title``, ``diff_url``).
  changedetection.io appends ``?format=text`` to the path.
- ``json://host/...`` posts Apprise's envelope ``{"version", "title", "message", "attachments", "type"}``;
  the URL and the watch uuid are in the rendered title/message (or the message is our JSON template).

changedetection.io cannot sign; it sends a fixed secret (a header or a query parameter), checked by the
API in constant time before this parser runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crawldex.errors import InvalidDocumentError
from crawldex.urls import canonicalize_url
from crawldex.webhooks import WebhookRejectedError, load_json

TOKEN_HEADER = "X-Crawldex-Token"  # noqa: S105 - a header name, not a secret
_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)
# Links changedetection.io itself renders into messages: not the watched page.
_OWN_LINKS = re.compile(r"/(diff|preview|edit)/[0-9a-f-]{36}", re.IGNORECASE)
MAX_WATCH_UUID_LENGTH = 128  # what change_events.watch_uuid holds; changedetection.io's are 36
_URL_KEYS = ("watch_url", "url")
_UUID_KEYS = ("watch_uuid", "uuid")


@dataclass(frozen=True)
class ChangeNotification:
    url: str
    canonical_url: str
    watch_uuid: str | None
    title: str | None
    detected_at: datetime | None


def _first_str(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _from_text(*texts: str) -> tuple[str | None, str | None]:
    """The watched URL and the watch uuid, read from rendered text (titles first)."""
    url = None
    for text in texts:
        for candidate in _URL.findall(text):
            candidate = candidate.rstrip(".,;:)]}>")
            if not _OWN_LINKS.search(candidate):
                url = candidate
                break
        if url:
            break
    uuid = None
    for text in texts:
        own = _OWN_LINKS.search(text)
        match = _UUID.search(own.group(0)) if own else _UUID.search(text)
        if match:
            uuid = match.group(0).lower()
            break
    return url, uuid


def _from_object(payload: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    url = _first_str(payload, _URL_KEYS)
    uuid = _first_str(payload, _UUID_KEYS)
    title = _first_str(payload, ("watch_title", "title"))
    diff_url = _first_str(payload, ("diff_url",))
    if uuid is None and diff_url:
        _, uuid = _from_text(diff_url)
    return url, uuid, title


def _json_or_none(text: str) -> Any:
    """The JSON value of ``text``, or None when it is not JSON: then it is read as rendered text."""
    try:
        return load_json(text)
    except WebhookRejectedError:
        return None


def parse_notification(body: bytes) -> ChangeNotification:
    if not body.strip():
        raise WebhookRejectedError(400, "empty body: expected changedetection.io's notification")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejectedError(400, f"body is not UTF-8: {exc}") from exc
    url: str | None
    uuid: str | None
    title: str | None = None
    payload = _json_or_none(text)
    if isinstance(payload, dict) and "message" in payload and ("version" in payload or "type" in payload):
        # Apprise's json:// envelope: the message may itself be our JSON template.
        message = payload.get("message") if isinstance(payload.get("message"), str) else ""
        envelope_title = payload.get("title") if isinstance(payload.get("title"), str) else ""
        inner = _json_or_none(message) if message else None
        if isinstance(inner, dict):
            url, uuid, title = _from_object(inner)
        else:
            url, uuid = _from_text(envelope_title or "", message or "")
            title = envelope_title or None
    elif isinstance(payload, dict):
        url, uuid, title = _from_object(payload)
    elif payload is None:
        url, uuid = _from_text(text)
    else:
        raise WebhookRejectedError(
            422, "body must be a JSON object or changedetection.io's text notification"
        )
    if url is None:
        raise WebhookRejectedError(
            422, "no watched URL in the notification (use {{watch_url}} in the body template)"
        )
    if uuid is not None and len(uuid) > MAX_WATCH_UUID_LENGTH:
        raise WebhookRejectedError(422, f"watch uuid is longer than {MAX_WATCH_UUID_LENGTH} characters")
    try:
        canonical = canonicalize_url(url)
    except InvalidDocumentError as exc:
        raise WebhookRejectedError(422, f"watched URL is not usable: {exc}") from exc
    return ChangeNotification(
        url=url, canonical_url=canonical, watch_uuid=uuid, title=title, detected_at=datetime.now(UTC)
    )
