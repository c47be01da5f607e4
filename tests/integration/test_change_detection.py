"""Change notifications → change events → rescrape → index, in one process (the embedded mode) with the
built-in fetcher reading real local pages. The e2e test runs the real changedetection.io."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import Settings
from crawldex.db.tables import ChangeEventStatus
from crawldex.models import PageDocument, utc_now
from crawldex.services import Services
from ingest_api.app import create_app
from tests.integration.test_api import AUTH, post_webhook, search, wait_for_job
from tests.pages import PageSite, serve_pages

TOKEN = "change-token"
HOOK = "/api/webhook/changedetection"


@pytest.fixture
def site() -> Iterator[PageSite]:
    with serve_pages() as pages:
        yield pages


@pytest.fixture
def client(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[TestClient]:
    configured = settings.model_copy(
        update={
            "embedded_workers": True,
            "changedetection_token": SecretStr(TOKEN),
            "fetch_allowed_hosts": ["127.0.0.1"],
            "rescrape_job_retries": 1,
            "rescrape_job_retry_intervals": [1],
        }
    )
    with TestClient(create_app(configured, embedder=embedder)) as test_client:
        yield test_client


def notify(client: TestClient, body: object, **params: str) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if "token" not in params:
        headers["X-Crawldex-Token"] = TOKEN
    return client.post(HOOK, content=content, headers=headers, params=params)


def wait_for_event(client: TestClient, event_id: int, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event: dict[str, Any] = client.get(f"/api/change-events/{event_id}", headers=AUTH).json()
        if event["status"] in ("indexed", "unchanged", "gone", "failed"):
            return event
        time.sleep(0.1)
    raise AssertionError(
        f"change event {event_id} still open: {client.get(f'/api/change-events/{event_id}', headers=AUTH).json()}"
    )


def test_post_template_change_reindexes_the_page(client: TestClient, site: PageSite) -> None:
    url = site.set("/kettle", site.html("Kettle", "<h1>Kettle</h1><p>The copper kettle whistles loudly.</p>"))
    indexed = client.post(
        "/api/index",
        json={"url": url, "markdown": "# Kettle\n\nThe copper kettle whistles loudly."},
        headers=AUTH,
    ).json()
    wait_for_job(client, indexed["job_id"])
    site.set(
        "/kettle", site.html("Kettle", "<h1>Kettle</h1><p>The glass kettle glows blue when boiling.</p>")
    )
    body = {
        "url": url,
        "uuid": "0f1e2d3c-4b5a-4697-8877-665544332211",
        "title": "Kettle",
        "diff_url": "http://cd.local/diff/0f1e2d3c-4b5a-4697-8877-665544332211",
    }
    response = notify(client, body, format="text")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["watch_uuid"] == "0f1e2d3c-4b5a-4697-8877-665544332211"
    event = wait_for_event(client, accepted["change_event_id"])
    assert event["status"] == "indexed", event
    assert event["attempts"] == 1
    assert event["rescrape_job_id"] == accepted["job_id"]
    assert event["index_job_id"]
    assert event["indexed_at"]
    for mode in ("hybrid", "semantic", "keyword"):
        texts = [r["text"] for r in search(client, "kettle", mode)["results"] if r["url"] == url]
        assert texts, mode
        assert all("copper" not in t for t in texts), mode
        assert any("glass kettle glows blue" in t for t in texts), mode


def test_apprise_json_envelope_and_token_parameter(client: TestClient, site: PageSite) -> None:
    url = site.set("/lamp", site.html("Lamp", "<p>A brass lamp with a green shade.</p>"))
    envelope = {
        "version": "1.0",
        "title": f"ChangeDetection.io Notification - {url}",
        "message": f"{url} had a change.\n\nhttp://cd.local/diff/9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        "attachments": [],
        "type": "info",
    }
    response = notify(client, envelope, token=TOKEN)
    assert response.status_code == 202, response.text
    assert response.json()["url"] == url
    assert response.json()["watch_uuid"] == "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    assert wait_for_event(client, response.json()["change_event_id"])["status"] == "indexed"
    assert search(client, "brass lamp green shade", "keyword")["results"][0]["url"] == url


def test_unchanged_page_ends_unchanged(client: TestClient, site: PageSite) -> None:
    url = site.set("/same", site.html("Same", "<p>Nothing new about the teapot.</p>"))
    first = notify(client, {"url": url}).json()
    assert wait_for_event(client, first["change_event_id"])["status"] == "indexed"
    second = notify(client, {"url": url}).json()
    assert wait_for_event(client, second["change_event_id"])["status"] == "unchanged"


def test_page_answering_404_is_gone_and_leaves_search(client: TestClient, site: PageSite) -> None:
    url = site.set("/vase", site.html("Vase", "<p>The porcelain vase is painted with cranes.</p>"))
    event = notify(client, {"url": url}).json()
    assert wait_for_event(client, event["change_event_id"])["status"] == "indexed"
    assert search(client, "porcelain vase cranes", "keyword")["results"][0]["url"] == url
    site.set("/vase", "<html><body>Not Found</body></html>", status=404)
    gone = wait_for_event(client, notify(client, {"url": url}).json()["change_event_id"])
    assert gone["status"] == "gone", gone
    for mode in ("hybrid", "semantic", "keyword"):
        assert all(r["url"] != url for r in search(client, "porcelain vase cranes", mode)["results"])
    # A later 200 brings it back.
    site.set("/vase", site.html("Vase", "<p>The porcelain vase is back, painted with herons.</p>"))
    back = wait_for_event(client, notify(client, {"url": url}).json()["change_event_id"])
    assert back["status"] == "indexed"
    assert search(client, "porcelain vase herons", "keyword")["results"][0]["url"] == url


def test_firecrawl_monitor_events(client: TestClient, site: PageSite) -> None:
    url = site.set("/desk", site.html("Desk", "<p>An oak desk with three drawers.</p>"))
    body = json.dumps(
        {
            "success": True,
            "type": "monitor.page",
            "id": "mon-1",
            "webhookId": "w-mon-1",
            "data": [
                {"monitorId": "mon-1", "checkId": "c1", "url": url, "status": "changed"},
                {"monitorId": "mon-1", "checkId": "c1", "url": url + "-x", "status": "same"},
            ],
        }
    ).encode()
    response = post_webhook(client, body)
    assert response.status_code == 202, response.text
    [event_id] = response.json()["change_event_ids"]
    assert wait_for_event(client, event_id)["status"] == "indexed"
    assert search(client, "oak desk drawers", "keyword")["results"][0]["url"] == url
    removed = json.dumps(
        {
            "success": True,
            "type": "monitor.page",
            "id": "mon-1",
            "webhookId": "w-mon-2",
            "data": [{"monitorId": "mon-1", "checkId": "c2", "url": url, "status": "removed"}],
        }
    ).encode()
    [gone_id] = post_webhook(client, removed).json()["change_event_ids"]
    assert wait_for_event(client, gone_id)["status"] == "gone"
    assert search(client, "oak desk drawers", "keyword")["results"] == []


def test_fetch_failure_ends_failed_after_retries(client: TestClient, site: PageSite) -> None:
    url = site.set("/broken", "<html><body>oops</body></html>", status=500)
    event = wait_for_event(client, notify(client, {"url": url}).json()["change_event_id"])
    assert event["status"] == "failed"
    assert event["attempts"] == 2  # one try and one retry
    assert "500" in event["error"]


def test_blocked_address_fails_without_fetching(
    settings: Settings, embedder: LocalModelEmbedder, site: PageSite
) -> None:
    # Retries are configured, but a blocked address is a permanent failure: one attempt, then failed.
    configured = settings.model_copy(
        update={"embedded_workers": True, "changedetection_token": SecretStr(TOKEN)}
    )
    url = site.set("/secret", site.html("Secret", "<p>internal</p>"))
    with TestClient(create_app(configured, embedder=embedder)) as client:
        event = wait_for_event(client, notify(client, {"url": url}).json()["change_event_id"])
    assert event["status"] == "failed"
    assert event["attempts"] == 1
    assert "127.0.0.1" in event["error"]
    assert site.hits.get("/secret", 0) == 0


def test_notifications_for_a_queued_watch_coalesce(settings: Settings, embedder: LocalModelEmbedder) -> None:
    # No consumer runs here, so the first event stays queued while the others arrive.
    configured = settings.model_copy(update={"changedetection_token": SecretStr(TOKEN)})
    with TestClient(create_app(configured, embedder=embedder)) as client:
        body = {"url": "https://example.org/a", "uuid": "11111111-2222-4333-8444-555555555555"}
        first, second, third = (notify(client, body).json() for _ in range(3))
        assert first["status"] == "queued"
        assert second["status"] == third["status"] == "coalesced"
        assert second["change_event_id"] == third["change_event_id"] == first["change_event_id"]
        assert second["job_id"] == first["job_id"]
        event = client.get(f"/api/change-events/{first['change_event_id']}", headers=AUTH).json()
        assert event["notifications"] == 3
        assert event["status"] == "queued"
        other = notify(client, {"url": "https://example.org/b"}).json()
        assert other["change_event_id"] != first["change_event_id"]
        listed = client.get("/api/change-events", params={"status": "queued"}, headers=AUTH).json()
        assert listed["total"] == 2
        assert [e["id"] for e in listed["events"]] == [other["change_event_id"], first["change_event_id"]]
        by_url = client.get(
            "/api/change-events", params={"url": "HTTPS://EXAMPLE.org/a"}, headers=AUTH
        ).json()
        assert [e["id"] for e in by_url["events"]] == [first["change_event_id"]]
        later = client.get(
            "/api/change-events", params={"since": "2100-01-01T00:00:00Z"}, headers=AUTH
        ).json()
        assert later["total"] == 0


def test_changedetection_webhook_refusals(client: TestClient) -> None:
    body = json.dumps({"url": "https://example.org/x"}).encode()
    assert client.post(HOOK, content=body).status_code == 401
    assert client.post(HOOK, content=body, headers={"X-Crawldex-Token": "wrong"}).status_code == 401
    assert client.post(HOOK, content=body, params={"token": "wrong"}).status_code == 401
    for bad, status in (
        (b"", 400),
        (b"\xff\xfe", 400),
        (b"[1]", 422),
        (b'{"title": "no url"}', 422),
        (b'{"url": "ftp://example.org/"}', 422),
        (b"just some text", 422),
    ):
        response = notify(client, bad)
        assert response.status_code == status, (bad, response.text)
        assert response.json()["detail"]
    assert client.get("/api/change-events/999999", headers=AUTH).status_code == 404
    assert client.get("/api/change-events", params={"status": "sleeping"}, headers=AUTH).status_code == 422
    assert (
        client.get("/api/change-events", params={"since": "2024-01-01T00:00:00"}, headers=AUTH).status_code
        == 422
    )
    for out_of_range in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        response = client.get("/api/change-events", params={"since": out_of_range}, headers=AUTH)
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == "since is out of range"
    assert client.get("/api/change-events").status_code == 401


def test_plain_text_notification(client: TestClient, site: PageSite) -> None:
    url = site.set("/text", site.html("Text", "<p>A text-only notification about spoons.</p>"))
    response = notify(
        client,
        f"Change detected on {url}\n\nSee http://cd.local/diff/aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee".encode(),
    )
    assert response.status_code == 202, response.text
    assert response.json()["url"] == url
    assert wait_for_event(client, response.json()["change_event_id"])["status"] == "indexed"


def test_redis_down_fails_the_event_instead_of_leaving_it_queued(
    settings: Settings, embedder: LocalModelEmbedder
) -> None:
    down = settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "changedetection_token": SecretStr(TOKEN)}
    )
    with TestClient(create_app(down, embedder=embedder)) as client:
        body = {"url": "https://example.org/a", "uuid": "11111111-2222-4333-8444-555555555555"}
        response = notify(client, body)
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        events = client.get("/api/change-events", headers=AUTH).json()["events"]
        assert [e["status"] for e in events] == ["failed"]
        assert "could not queue" in events[0]["error"]
        # The next notification for the watch gets an event of its own (it is not joined to a dead one).
        assert notify(client, body).status_code == 503
        assert client.get("/api/change-events", headers=AUTH).json()["total"] == 2


async def test_a_finished_event_is_never_reopened(services: Services) -> None:
    events = services.change_events
    event, _ = await events.open(
        source="changedetection",
        watch_uuid=None,
        url="https://example.org/p",
        canonical_url="https://example.org/p",
        detected_at=None,
    )
    assert (await events.start_fetching(event.id)).status == "fetching"  # type: ignore[union-attr]
    assert await events.finish(event.id, ChangeEventStatus.INDEXED)
    await events.start_indexing(event.id, "late-job")  # a step that arrives after the end changes nothing
    assert not await events.finish(event.id, ChangeEventStatus.FAILED, error="late")
    again = await events.start_fetching(event.id)
    assert again is not None
    assert again.status == "indexed"
    final = await events.get(event.id)
    assert final is not None
    assert (final.status, final.index_job_id, final.error, final.attempts) == ("indexed", None, None, 1)


async def test_a_late_removal_keeps_newer_content(services: Services) -> None:
    url = "https://example.org/back"
    seen_gone = utc_now()
    await services.pipeline.index(
        PageDocument(
            url=url, markdown="the page came back with otters", received_at=seen_gone + timedelta(seconds=5)
        )
    )
    assert await services.pipeline.remove(url, received_at=seen_gone) == 0
    assert await services.store.count() == 1
    # And an index job older than the removal does not bring a removed page back.
    await services.pipeline.remove(url, received_at=seen_gone + timedelta(seconds=10))
    stale = await services.pipeline.index(
        PageDocument(url=url, markdown="stale crawl", received_at=seen_gone + timedelta(seconds=7))
    )
    assert stale.status.value == "superseded"
    assert await services.store.count() == 0
