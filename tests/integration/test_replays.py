"""Every webhook replayed three times: one job each, and the same index as without the replays.

Replays come twice: while the first delivery's job is still queued (a sender retrying a slow answer), and
after it has run (a proxy or an attacker re-sending a captured request). A Firecrawl delivery names its jobs
(webhookId, else its content), so its replays find them, queued or finished, and queue nothing. A
changedetection.io notification replayed while its change event is open joins it; one replayed after the
event ended is a new change (the page may have changed again): its fetch finds the same content, and the
index stays as it was. Real Redis, PostgreSQL, embedded Qdrant, the model, and the project's worker run it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from qdrant_client import QdrantClient
from rq.job import Job
from rq.serializers import JSONSerializer

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import Settings
from crawldex.webhooks.firecrawl import sign
from ingest_api.app import create_app
from tests.conftest import API_TOKEN, WEBHOOK_SECRET, fixture_bytes
from tests.deliveries import crawl_page_delivery
from tests.pages import PageSite, serve_pages
from tests.workers import running_workers, wait_until

CHANGE_TOKEN = "replay-change-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass(frozen=True)
class Delivery:
    path: str
    body: bytes
    headers: dict[str, str]


def firecrawl(body: bytes) -> Delivery:
    headers = {"Content-Type": "application/json", "X-Firecrawl-Signature": sign(WEBHOOK_SECRET, body)}
    return Delivery("/api/webhook/firecrawl", body, headers)


def change(url: str) -> Delivery:
    body = json.dumps({"url": url, "title": "changed"}).encode()
    return Delivery("/api/webhook/changedetection", body, {"X-Crawldex-Token": CHANGE_TOKEN})


@pytest.fixture
def site() -> Iterator[PageSite]:
    with serve_pages() as pages:
        yield pages


@pytest.fixture
def replay_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "embedded_workers": False,  # jobs wait in Redis until the test runs the worker
            "changedetection_token": SecretStr(CHANGE_TOKEN),
            "fetch_allowed_hosts": ["127.0.0.1"],
        }
    )


@contextmanager
def api(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[TestClient]:
    with TestClient(create_app(settings, embedder=embedder)) as client:
        yield client


def post(client: TestClient, delivery: Delivery) -> dict[str, Any]:
    response = client.post(delivery.path, content=delivery.body, headers=delivery.headers)
    assert response.status_code in (200, 202), response.text  # 200: acknowledged, nothing to queue
    answer: dict[str, Any] = response.json()
    return answer


def jobs_of(answer: dict[str, Any]) -> list[str]:
    if "change_event_id" in answer:
        return [answer["job_id"]]
    return list(answer["job_ids"])


def job_keys(connection: redis.Redis) -> set[bytes]:
    return {key for key in connection.scan_iter("rq:job:*") if key.count(b":") == 2}


def index_snapshot(settings: Settings) -> dict[str, tuple[str, str]]:
    """Every point: its id → (its payload without the times of writing, its vectors), as JSON."""
    store = QdrantClient(path=str(settings.qdrant_path))
    try:
        points, offset = [], None
        while True:
            batch, offset = store.scroll(
                settings.qdrant_collection, limit=500, offset=offset, with_payload=True, with_vectors=True
            )
            points.extend(batch)
            if offset is None:
                break
    finally:
        store.close()
    snapshot = {}
    for point in points:
        payload = {k: v for k, v in (point.payload or {}).items() if not k.endswith("_at")}
        vectors = point.vector
        snapshot[str(point.id)] = (
            json.dumps(payload, sort_keys=True),
            json.dumps(vectors, sort_keys=True, default=str),
        )
    return snapshot


def test_every_webhook_replayed_three_times_gives_one_job_each_and_the_same_index(
    replay_settings: Settings, embedder: LocalModelEmbedder, site: PageSite, clean_redis: redis.Redis
) -> None:
    long_text = "\n\n".join(
        f"## Part {i}\n\n" + "Otters crack shellfish on their bellies. " * 40 for i in range(4)
    )
    deliveries = [
        firecrawl(
            crawl_page_delivery(
                "https://replay.example/one",
                webhook_id="replay-1",
                crawl_id="replay-crawl",
                markdown="# One\n\nHerons stand still in shallow water.",
            )
        ),
        firecrawl(
            crawl_page_delivery(
                "https://replay.example/two",
                webhook_id="replay-2",
                crawl_id="replay-crawl",
                markdown="# Two\n\n" + long_text,
            )
        ),
        firecrawl(fixture_bytes("firecrawl", "v2_crawl_page.json")),
        firecrawl(fixture_bytes("firecrawl", "v1_batch_scrape_page.json")),
        firecrawl(fixture_bytes("firecrawl", "v0_crawl_page.json")),
        firecrawl(fixture_bytes("firecrawl", "crawl_completed.json")),
    ]
    for number in range(3):
        url = site.set(
            f"/watched/{number}",
            PageSite.html(f"Watched {number}", f"<p>Kingfisher number {number} dives.</p>"),
        )
        deliveries.append(change(url))

    connection = clean_redis
    with api(replay_settings, embedder) as client:
        first = [post(client, delivery) for delivery in deliveries]
        queued = job_keys(connection)
        for _ in range(3):  # while the jobs are still queued
            for delivery, answer in zip(deliveries, first, strict=True):
                again = post(client, delivery)
                assert jobs_of(again) == jobs_of(answer), delivery.path
                if "change_event_id" in answer:
                    assert again["change_event_id"] == answer["change_event_id"]
                else:
                    assert again["deduplicated_jobs"] == len(answer["job_ids"])
        assert job_keys(connection) == queued, "replays while pending queued nothing"
    page_jobs = [job for answer in first for job in jobs_of(answer)]
    assert len(page_jobs) == len(set(page_jobs))

    with running_workers(replay_settings, embedder):  # the only process-wide user of the embedded store
        wait_until(
            lambda: all_finished(connection, page_jobs) and not pending(connection), "the jobs to finish"
        )
    before = index_snapshot(replay_settings)
    assert before

    with api(replay_settings, embedder) as client:
        for replay in range(3):  # after the jobs ran
            for delivery, answer in zip(deliveries, first, strict=True):
                again = post(client, delivery)
                if "change_event_id" not in answer:
                    assert jobs_of(again) == jobs_of(answer), delivery.path
                    # A delivery without a webhookId is named by its content, joined only while pending: the
                    # first replay runs it again (it finds the page unchanged), the next ones join that run.
                    identified = b'"webhookId"' in delivery.body
                    joined = identified or replay > 0
                    assert again["deduplicated_jobs"] == (len(answer["job_ids"]) if joined else 0)
    # A notification after its event ended is a new change (the page may have changed again): it gets a new
    # event, whose fetch finds the same content and leaves the index as it was.
    with running_workers(replay_settings, embedder):
        wait_until(lambda: not pending(connection), "the replays' jobs to finish")
    with api(replay_settings, embedder) as client:
        events = client.get("/api/change-events", headers=AUTH, params={"limit": 100}).json()
    assert index_snapshot(replay_settings) == before
    statuses = {event["status"] for event in events["events"]}
    assert statuses <= {"indexed", "unchanged"}, events
    assert events["total"] == 6  # 3 notifications, and 3 more from their first replay after the events ended


def all_finished(connection: redis.Redis, job_ids: list[str]) -> bool:
    for job in Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer):
        assert job is not None
        status = job.get_status(refresh=False)
        assert status != "failed", (job.id, job.latest_result())
        if status != "finished":
            return False
    return True


def pending(connection: redis.Redis) -> bool:
    return any(
        connection.llen(f"rq:queue:{queue}") or connection.zcard(f"rq:wip:{queue}")
        or connection.zcard(f"rq:scheduled:{queue}")
        for queue in ("indexing", "rescrape")
    )  # fmt: skip
