"""changedetection.io notifications: any body gives a notification or a 4xx with a reason; the shapes
changedetection.io sends (our post:// template, Apprise's json:// envelope, rendered text) round-trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from crawldex.urls import canonicalize_url
from crawldex.webhooks import WebhookRejectedError
from crawldex.webhooks.changedetection import ChangeNotification, parse_notification
from tests.unit.webhook_strategies import json_values, web_urls, words

_uuids = st.uuids().map(str)


def _parsed_or_4xx(body: bytes) -> ChangeNotification | None:
    try:
        notification = parse_notification(body)
    except WebhookRejectedError as exc:
        rejected = exc
    else:
        assert notification.canonical_url == canonicalize_url(notification.url)
        return notification
    assert 400 <= rejected.status_code < 500, rejected
    assert rejected.reason
    return None


@given(st.binary(max_size=300))
@example(b"[" * 100_000)
@example(b"1" * 5000)
@example(b'{"version": "1.0", "message": "' + b"[" * 5000 + b'", "type": "info"}')
@example(b'{"url": "https://a.example/", "uuid": "' + b"u" * 200 + b'"}')
@example(b"NaN https://a.example/x")
@example(b"\xff")
def test_any_bytes_give_a_notification_or_a_4xx(body: bytes) -> None:
    _parsed_or_4xx(body)


@given(
    st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(
            ("url", "watch_url", "uuid", "watch_uuid", "title", "watch_title", "diff_url", "version", "type"),
            json_values,
        ),
    ),
    st.none() | json_values | web_urls.map(lambda url: f"changed: {url}"),
)
def test_any_json_gives_a_notification_or_a_4xx(payload: dict[str, Any], message: object) -> None:
    _parsed_or_4xx(json.dumps(payload).encode())
    if message is not None:  # as Apprise's envelope
        _parsed_or_4xx(json.dumps({**payload, "version": "1.0", "message": message}).encode())
    _parsed_or_4xx(json.dumps([payload]).encode())


@pytest.mark.parametrize(
    ("url_key", "uuid_key", "title_key"),
    [("url", "uuid", "title"), ("watch_url", "watch_uuid", "watch_title")],
)
@given(url=web_urls, uuid=st.none() | _uuids, title=st.none() | words, with_diff_url=st.booleans())
def test_the_body_template_round_trips(
    url_key: str,
    uuid_key: str,
    title_key: str,
    url: str,
    uuid: str | None,
    title: str | None,
    with_diff_url: bool,
) -> None:
    template: dict[str, str] = {url_key: url}
    if uuid is not None:
        template[uuid_key] = uuid
    if title is not None:
        template[title_key] = title
    if with_diff_url:
        template["diff_url"] = f"https://changes.example/diff/{'0' * 8}-0000-4000-8000-{'0' * 12}"
    for body in (
        template,
        {"version": "1.0", "type": "info", "title": "ignored", "message": json.dumps(template)},
    ):
        notification = parse_notification(json.dumps(body).encode())
        assert notification.url == url
        assert notification.canonical_url == canonicalize_url(url)
        expected_uuid = (
            uuid if uuid is not None else ("00000000-0000-4000-8000-000000000000" if with_diff_url else None)
        )
        assert notification.watch_uuid == expected_uuid
        assert notification.title == title


@given(url=web_urls, uuid=_uuids)
def test_rendered_text_round_trips(url: str, uuid: str) -> None:
    """json:// with changedetection.io's default title and body, and a text body: the URL and the uuid are read
    from the text, changedetection.io's own links (diff, preview, edit) are not the watched page."""
    own_link = f"https://changes.example/diff/{uuid.upper()}"
    message = f"{own_link}\n\nChange detected at {url}.\n---\n(diff follows)"
    envelope = {
        "version": "1.0",
        "title": f"ChangeDetection.io Notification - {url}",
        "message": message,
        "type": "info",
    }
    for body in (json.dumps(envelope).encode(), message.encode()):
        notification = parse_notification(body)
        assert (notification.url, notification.watch_uuid) == (url, uuid)
        assert notification.canonical_url == canonicalize_url(url)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"\xff", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'{"uuid": "abc"}', "no watched URL"),
        (b'{"url": "ftp://a.example/"}', "not usable"),
        (b'{"url": "https://a.example/", "uuid": "' + b"u" * 129 + b'"}', "longer than 128"),
    ],
)
def test_refusals_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(WebhookRejectedError) as refused:
        parse_notification(body)
    assert 400 <= refused.value.status_code < 500
    assert reason in refused.value.reason
