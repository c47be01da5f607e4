"""The real changedetection.io watches a local page; when the page changes, its notification reaches
ingest-api, the page is re-fetched and re-indexed, and search shows the new text, never the old.

changedetection.io runs from its own virtualenv (scripts/ensure-changedetection.sh, which `make test`
runs; CRAWLDEX_TEST_CHANGEDETECTION names its command) and talks only to 127.0.0.1. Both notification
formats are exercised: `post://` with our JSON body template and `json://` (Apprise's envelope).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_TOKEN
from tests.e2e.conftest import Deployment, Process, free_port, wait_until_healthy
from tests.pages import PageSite, serve_pages

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
TOKEN = "e2e-change-token"
BODY_TEMPLATE = (
    '{"url": {{watch_url|tojson}}, "uuid": "{{watch_uuid}}", "title": {{watch_title|tojson}}, '
    '"diff_url": {{diff_url|tojson}}}'
)


class ChangeDetection:
    def __init__(self, process: Process, base_url: str, api_key: str) -> None:
        self.process = process
        self.base_url = base_url
        self.headers = {"x-api-key": api_key}

    def create_watch(self, url: str, notification_url: str) -> str:
        response = httpx.post(
            f"{self.base_url}/api/v1/watch",
            headers=self.headers,
            timeout=30,
            json={
                "url": url,
                "title": "crawldex e2e",
                "notification_urls": [notification_url],
                "notification_title": "crawldex {{watch_uuid}}",
                "notification_body": BODY_TEMPLATE,
                "notification_format": "text",
            },
        )
        assert response.status_code in (200, 201), response.text
        uuid: str = response.json()["uuid"]
        return uuid

    def watch(self, uuid: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(
            f"{self.base_url}/api/v1/watch/{uuid}", headers=self.headers, timeout=30
        ).json()
        return body

    def recheck(self, uuid: str) -> None:
        response = httpx.get(
            f"{self.base_url}/api/v1/watch/{uuid}", params={"recheck": "1"}, headers=self.headers, timeout=30
        )
        assert response.status_code == 200, response.text

    def wait_checks(self, uuid: str, count: int, timeout: float = 90) -> dict[str, Any]:
        """Until the watch has been checked ``count`` times (last_checked has only whole seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            watch = self.watch(uuid)
            if (watch.get("check_count") or 0) >= count:
                return watch
            time.sleep(0.5)
        raise AssertionError(
            f"changedetection.io did not check {uuid}: {self.watch(uuid)}\n{self.process.output()[-2000:]}"
        )


@pytest.fixture
def site() -> Iterator[PageSite]:
    with serve_pages() as pages:
        yield pages


@pytest.fixture
def changedetection(deployment: Deployment, tmp_path: Path, site: PageSite) -> ChangeDetection:
    command = os.environ.get("CRAWLDEX_TEST_CHANGEDETECTION")
    assert command, "CRAWLDEX_TEST_CHANGEDETECTION is unset: run the tests with `make test` (scripts/test.sh)"
    port = free_port()
    datadir = tmp_path / "changedetection"
    first = site.set("/first", site.html("First", "<p>first watch</p>"))
    process = deployment.start(
        "changedetection",
        [command, "-h", "127.0.0.1", "-p", str(port), "-d", str(datadir), "-C", "-u", first],
        ALLOW_IANA_RESTRICTED_ADDRESSES="true",
        DISABLE_VERSION_CHECK="true",
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.popen.poll() is None, process.output()[-3000:]
        settings = datadir / "changedetection.json"
        try:
            key = json.loads(settings.read_text())["settings"]["application"]["api_access_token"]
            if (
                httpx.get(f"{base_url}/api/v1/watch", headers={"x-api-key": key}, timeout=2).status_code
                == 200
            ):
                return ChangeDetection(process, base_url, key)
        except (OSError, ValueError, KeyError, httpx.TransportError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"changedetection.io did not start:\n{process.output()[-3000:]}")


def wait_for_change_event(client: httpx.Client, url: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = client.get("/api/change-events", params={"url": url}).json()["events"]
        if events and events[0]["status"] in ("indexed", "unchanged", "gone", "failed"):
            event: dict[str, Any] = events[0]
            return event
        time.sleep(0.25)
    raise AssertionError(f"no finished change event for {url}: {client.get('/api/change-events').json()}")


@pytest.mark.parametrize("scheme", ["post", "json"])
def test_change_reindexes_the_page(
    deployment: Deployment, changedetection: ChangeDetection, site: PageSite, scheme: str
) -> None:
    port = free_port()
    api = deployment.start_api(
        port,
        CRAWLDEX_EMBEDDED_WORKERS="true",
        CRAWLDEX_CHANGEDETECTION_TOKEN=TOKEN,
        CRAWLDEX_FETCH_ALLOWED_HOSTS='["127.0.0.1"]',
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(api, base)
    url = site.set(
        "/article", site.html("Article", "<h1>Tides</h1><p>The old text says the tide is low at noon.</p>")
    )
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as client:
        # The crawl indexed the page once.
        job = client.post(
            "/api/index",
            json={"url": url, "markdown": "# Tides\n\nThe old text says the tide is low at noon."},
        ).json()
        deadline = time.monotonic() + 60
        while client.get(f"/api/jobs/{job['job_id']}").json()["status"] != "finished":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.post("/api/search", json={"query": "tide low noon", "mode": "keyword"}).json()[
            "results"
        ]

        hook = f"{scheme}://127.0.0.1:{port}/api/webhook/changedetection?+X-Crawldex-Token={TOKEN}"
        uuid = changedetection.create_watch(url, hook)
        # The first check takes the first snapshot; it sends no notification.
        first = changedetection.wait_checks(uuid, 1)
        site.set(
            "/article",
            site.html("Article", "<h1>Tides</h1><p>The new text says the tide is high at dusk.</p>"),
        )
        changedetection.recheck(uuid)
        changedetection.wait_checks(uuid, first["check_count"] + 1)

        event = wait_for_change_event(client, url)
        assert event["status"] == "indexed", event
        assert event["watch_uuid"] == uuid
        assert event["source"] == "changedetection"
        for mode in ("hybrid", "semantic", "keyword"):
            hits = [
                r
                for r in client.post("/api/search", json={"query": "tide", "mode": mode}).json()["results"]
                if r["url"] == url
            ]
            assert hits, mode
            assert any("high at dusk" in h["text"] for h in hits), mode
            assert all("low at noon" not in h["text"] for h in hits), mode
