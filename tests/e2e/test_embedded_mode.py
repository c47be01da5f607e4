"""`make dev`'s process: one ingest-api with its in-process consumer, driven over real HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from crawldex.webhooks.firecrawl import sign
from tests.conftest import API_TOKEN, WEBHOOK_SECRET
from tests.e2e.conftest import Deployment, free_port, wait_until_healthy

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
URL = "https://shop.example/products/kettle"


def webhook(client: httpx.Client, markdown: str) -> dict[str, Any]:
    body = json.dumps(
        {
            "success": True,
            "type": "crawl.page",
            "id": "crawl-e2e",
            "webhookId": f"wh-{time.time_ns()}",
            "data": [
                {
                    "markdown": markdown,
                    "metadata": {
                        "url": URL,
                        "sourceURL": URL,
                        "statusCode": 200,
                        "title": "Kettle",
                        "language": "en",
                    },
                }
            ],
        }
    ).encode()
    response = client.post(
        "/api/webhook/firecrawl",
        content=body,
        headers={"X-Firecrawl-Signature": sign(WEBHOOK_SECRET, body), "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    [job_id] = response.json()["job_ids"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}", headers=AUTH).json()
        if job["status"] in ("finished", "failed"):
            assert job["status"] == "finished", job
            return job
        time.sleep(0.1)
    raise AssertionError("job did not finish")


def search(client: httpx.Client, query: str, mode: str, group_by: str = "chunk") -> list[dict[str, Any]]:
    """Every matching chunk by default (the index's state); ``group_by="page"`` as a default request ranks."""
    body = {"query": query, "mode": mode, "limit": 100, "group_by": group_by}
    response = client.post("/api/search", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_webhook_to_search_in_one_process(deployment: Deployment) -> None:
    port = free_port()
    api = deployment.start_api(port, CRAWLDEX_EMBEDDED_WORKERS="true")
    wait_until_healthy(api, f"http://127.0.0.1:{port}")
    original = "# Electric kettle\n\n" + "\n\n".join(
        f"## Feature {i}\n\n" + "The stainless kettle boils water quickly and switches itself off. " * 12
        for i in range(5)
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        first = webhook(client, original)
        chunks = first["result"]["chunk_count"]
        assert chunks > 1
        for mode in ("hybrid", "semantic", "keyword"):
            assert search(client, "kettle that boils water", mode)[0]["url"] == URL
            assert [r["url"] for r in search(client, "kettle that boils water", mode, "page")] == [URL]
        points = sorted(
            (r["id"], r["text"]) for r in search(client, "stainless kettle boils water", "keyword")
        )
        assert len(points) == chunks
        for _ in range(3):
            webhook(client, original)
        assert (
            sorted((r["id"], r["text"]) for r in search(client, "stainless kettle boils water", "keyword"))
            == points
        )

        changed = webhook(client, "# Electric kettle\n\nNow with a ceramic jug and a tea infuser.")
        assert changed["result"]["chunk_count"] == 1
        for mode in ("hybrid", "semantic", "keyword"):
            hits = search(client, "stainless kettle boils water quickly", mode)
            assert all("stainless" not in h["text"] for h in hits)
            assert [h["url"] for h in search(client, "ceramic jug tea infuser", mode)] == [URL]
