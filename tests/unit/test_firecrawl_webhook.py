from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawldex.webhooks.firecrawl import (
    FirecrawlDelivery,
    WebhookRejectedError,
    parse_delivery,
    sign,
    verify_signature,
)
from tests.conftest import fixture_bytes

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
