from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from crawldex.webhooks.firecrawl import (
    FirecrawlDelivery,
    WebhookRejectedError,
    parse_delivery,
    sign,
    verify_signature,
)
from tests.conftest import fixture_bytes
from tests.unit.webhook_strategies import json_values, web_urls, words

SECRET = "s3cret"


def test_signature_round_trip() -> None:
    body = fixture_bytes("firecrawl", "v2_crawl_page.json")
    verify_signature(SECRET, body, sign(SECRET, body))
    verify_signature(SECRET, body, sign(SECRET, body).upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    "header", [None, "", "sha256=", "sha256=zz", "md5=abc", "sha256=" + "0" * 64, "deadbeef"]
)
def test_bad_signatures_are_401(header: str | None) -> None:
    body = fixture_bytes("firecrawl", "v2_crawl_page.json")
    with pytest.raises(WebhookRejectedError) as err:
        verify_signature(SECRET, body, header)
    assert err.value.status_code == 401


def test_signature_covers_the_exact_bytes() -> None:
    body = fixture_bytes("firecrawl", "v2_crawl_page.json")
    reformatted = json.dumps(json.loads(body)).encode()
    with pytest.raises(WebhookRejectedError):
        verify_signature(SECRET, reformatted, sign(SECRET, body))


def test_v2_page() -> None:
    delivery = parse_delivery(fixture_bytes("firecrawl", "v2_crawl_page.json"))
    assert delivery.is_page_event
    assert delivery.success
    assert delivery.crawl_id == "0d9f3c1e-5b7a-4c1d-9e2f-8a6b4c3d2e1f"
    assert delivery.webhook_id == "7b1e2c3d-4f5a-4b6c-8d9e-0f1a2b3c4d5e"
    [page] = delivery.pages
    assert page.url == "https://docs.example.com/guides/autoscaling/"  # the final URL, after redirects
    assert page.title == "Autoscaling index workers"
    assert page.language == "en"
    assert page.crawl_id == delivery.crawl_id
    assert page.markdown.startswith("# Autoscaling index workers")
    assert delivery.failed == []


def test_v1_list_valued_metadata() -> None:
    delivery = parse_delivery(fixture_bytes("firecrawl", "v1_batch_scrape_page.json"))
    [page] = delivery.pages
    assert page.title == "Release notes 2.4"
    assert page.language == "de-DE"
    assert page.source == "batch_scrape.page"


def test_v0_job_id_and_source_url() -> None:
    delivery = parse_delivery(fixture_bytes("firecrawl", "v0_crawl_page.json"))
    assert delivery.crawl_id == "legacy-job-42"
    [page] = delivery.pages
    assert page.url == "https://legacy.example.net/page"
    assert "Redis lists" in page.markdown


@pytest.mark.parametrize("name", ["crawl_started.json", "crawl_completed.json", "unknown_event.json"])
def test_non_page_events_carry_no_pages(name: str) -> None:
    delivery = parse_delivery(fixture_bytes("firecrawl", name))
    assert not delivery.is_page_event
    assert delivery.pages == []
    assert delivery.failed == []


def test_failed_page_is_reported_not_indexed() -> None:
    delivery = parse_delivery(fixture_bytes("firecrawl", "crawl_page_failed.json"))
    assert delivery.pages == []
    assert [(f.url, f.error) for f in delivery.failed] == [
        ("https://docs.example.com/broken", "Request timed out after 30000ms")
    ]


def test_error_status_page_is_not_indexed() -> None:
    delivery = parse_delivery(fixture_bytes("firecrawl", "crawl_page_404.json"))
    assert delivery.pages == []
    assert delivery.failed[0].error == "page answered HTTP 404"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"", 400, "not valid JSON"),
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[]", 422, "JSON object"),
        (b'{"success": true}', 422, "'type'"),
        (b'{"type": 5}', 422, "'type'"),
        (b'{"type": "crawl.page", "success": "yes"}', 422, "'success'"),
        (b'{"type": "crawl.page", "data": {"a": 1}}', 422, "'data'"),
        (b'{"type": "crawl.page", "id": 7, "data": []}', 422, "'id'"),
    ],
)
def test_malformed_bodies(body: bytes, status: int, reason: str) -> None:
    with pytest.raises(WebhookRejectedError) as err:
        parse_delivery(body)
    assert err.value.status_code == status
    assert reason in err.value.reason


def test_bad_documents_fail_alone() -> None:
    body = json.dumps(
        {
            "type": "crawl.page",
            "id": "c",
            "success": True,
            "data": [
                "not an object",
                {"markdown": "no url"},
                {"metadata": {"url": "https://ok.example/1"}},
                {"markdown": "bad url", "metadata": {"url": "javascript:alert(1)"}},
                {"markdown": "good", "metadata": {"url": "https://ok.example/2", "title": 5}},
            ],
        }
    ).encode()
    delivery = parse_delivery(body)
    assert [p.url for p in delivery.pages] == ["https://ok.example/2"]
    assert delivery.pages[0].title is None
    assert len(delivery.failed) == 4


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_parser_never_crashes(value: object) -> None:
    outcome: FirecrawlDelivery | int
    try:
        outcome = parse_delivery(json.dumps(value).encode())
    except WebhookRejectedError as exc:  # the only error it may raise, always a 422 for valid JSON
        outcome = exc.status_code
    has_type = isinstance(value, dict) and isinstance(value.get("type"), str) and bool(value["type"].strip())
    assert outcome == 422 or (has_type and isinstance(outcome, FirecrawlDelivery))
    page_body = json.dumps({"type": "crawl.page", "data": [value], "success": True}).encode()
    delivery = parse_delivery(page_body)
    assert len(delivery.pages) + len(delivery.failed) == 1


# Arbitrary input: bytes, and JSON with any value in any field. Never anything but a delivery or a 4xx.
def _parsed_or_4xx(body: bytes) -> FirecrawlDelivery | None:
    try:
        return parse_delivery(body)
    except WebhookRejectedError as exc:
        rejected = exc
    assert 400 <= rejected.status_code < 500, rejected
    assert rejected.reason
    return None


@given(st.binary(max_size=300))
@example(b"[" * 100_000)  # nested deeper than the JSON decoder recurses
@example(b"1" * 5000)  # more digits than Python converts to an int
@example(b'{"type": "crawl.page", "data": [{"markdown": "x", "metadata": {"url": NaN}}]}')
@example(b'\xef\xbb\xbf{"type": "crawl.started"}')
@example(b'{"type": "\\u0000"}')
@example(b'\xff\xfe{\x00"\x00t\x00')
@example(
    b'{"type": "crawl.page", "id": "\\ud800", "data": [{"markdown": "\\udfff", "metadata": {"url": "https://a.example/\\ud800"}}]}'
)
@example(b'{"type": "\xed\xa0\x80"}')  # a surrogate as raw bytes: not UTF-8
def test_any_bytes_give_a_delivery_or_a_4xx(body: bytes) -> None:
    _parsed_or_4xx(body)


def test_lone_surrogates_become_replacement_characters_and_pairs_stay_whole() -> None:
    body = (
        b'{"type": "crawl.page", "id": "c\\ud800", "data": [{"markdown": "cut \\ud83d, whole \\ud83d\\ude00,'
        b' low \\ude00, raw \xf0\x9f\x98\x80", "metadata": {"url": "https://a.example/\\udc00x", "\\ud800": 1}}]}'
    )
    delivery = parse_delivery(body)
    assert delivery.crawl_id == "c\ufffd"
    [page] = delivery.pages
    assert page.markdown == "cut \ufffd, whole \U0001f600, low \ufffd, raw \U0001f600"
    assert page.url == "https://a.example/\ufffdx"
    with pytest.raises(WebhookRejectedError, match="not valid JSON"):
        parse_delivery(b'{"type": "crawl.page", "id": "\xed\xa0\x80"}')


@given(
    st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(
            ("type", "id", "jobId", "webhookId", "success", "error", "data", "metadata"), json_values
        ),
    ),
    st.sampled_from(["crawl.page", "batch_scrape.page", "monitor.page", "crawl.completed", " crawl.page "]),
)
def test_any_json_in_any_field_gives_a_delivery_or_a_4xx(payload: dict[str, object], event: str) -> None:
    for body in (payload, {**payload, "type": event}):
        delivery = _parsed_or_4xx(json.dumps(body).encode())
        if delivery is not None:
            assert delivery.event_type == str(body["type"]).strip()
            # Every document of a page event is either a page or a failure, never dropped.
            data = body.get("data")
            if delivery.is_page_event and isinstance(data, list):
                assert len(delivery.pages) + len(delivery.failed) == len(data)


# Valid deliveries: what was sent is what comes out.
_documents = st.fixed_dictionaries(
    {
        "url": web_urls,
        "markdown": st.text(max_size=200),
        "title": words,
        "status": st.sampled_from([200, 301, 404, 500]),
    },
    optional={"language": st.sampled_from(["en", "de-DE", "fr"]), "title_as_list": st.booleans()},
)


def _document(spec: dict[str, Any]) -> dict[str, Any]:
    title: object = ["", "  ", spec["title"]] if spec.get("title_as_list") else spec["title"]
    metadata: dict[str, object] = {"sourceURL": spec["url"], "title": title, "statusCode": spec["status"]}
    if "language" in spec:
        metadata["language"] = spec["language"]
    return {"markdown": spec["markdown"], "metadata": metadata}


@given(
    st.sampled_from(["crawl.page", "batch_scrape.page"]),
    words,
    st.none() | words,
    st.lists(_documents, max_size=5),
)
def test_valid_page_deliveries_round_trip(
    event: str, crawl_id: str, webhook_id: str | None, documents: list[dict[str, Any]]
) -> None:
    payload: dict[str, object] = {
        "success": True,
        "type": event,
        "id": crawl_id,
        "data": [_document(d) for d in documents],
    }
    if webhook_id is not None:
        payload["webhookId"] = webhook_id
    delivery = parse_delivery(json.dumps(payload).encode())
    assert (delivery.event_type, delivery.crawl_id, delivery.webhook_id, delivery.success) == (
        event,
        crawl_id,
        webhook_id,
        True,
    )
    indexable = [d for d in documents if d["status"] < 400]
    assert [(p.url, p.markdown, p.title, p.language) for p in delivery.pages] == [
        (d["url"], d["markdown"], d["title"], d.get("language")) for d in indexable
    ]
    assert all(p.crawl_id == crawl_id and p.source == event for p in delivery.pages)
    assert [(f.url, f.error) for f in delivery.failed] == [
        (d["url"], f"page answered HTTP {d['status']}") for d in documents if d["status"] >= 400
    ]


@given(
    st.lists(
        st.tuples(web_urls, st.sampled_from(["changed", "removed", "same", "new", "CHANGED"])), max_size=5
    )
)
def test_monitor_changes_round_trip(changes: list[tuple[str, str]]) -> None:
    payload = {
        "type": "monitor.page",
        "id": "m",
        "data": [{"url": url, "status": status} for url, status in changes],
    }
    delivery = parse_delivery(json.dumps(payload).encode())
    assert [(c.url, c.status) for c in delivery.monitor_changes] == [
        (url, status.lower()) for url, status in changes if status.lower() in ("changed", "removed")
    ]
    assert delivery.pages == []
    assert delivery.failed == []
