"""Crawl bookkeeping and reconciliation with real Redis and PostgreSQL, the real model, the embedded consumer
running the jobs, and a local server answering like Firecrawl's crawl results API (tests/firecrawl_server.py)
with the recorded-shape documents of tests/fixtures/firecrawl_crawl."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr
from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy import select

from crawldex.adapters.firecrawl import FirecrawlScraper
from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import QUEUE_INDEXING, Settings
from crawldex.crawls import ReceivedPagesRecorder, reconcile, record_index_end, record_received
from crawldex.db.crawls import CrawlRepository, PageDelivery
from crawldex.db.database import Database
from crawldex.db.migrate import upgrade
from crawldex.db.tables import CrawlPage, CrawlPageState
from crawldex.models import PageDocument, utc_now
from crawldex.services import Services
from crawldex.urls import canonicalize_url
from ingest_api.app import create_app
from tests.conftest import fixture_json
from tests.firecrawl_server import FirecrawlServer, serve_firecrawl
from tests.integration.test_api import AUTH, post_webhook, search, wait_for_job

CRAWL_ID = "3f2b6d1e-8c4a-4b7e-9d2f-1a5c7e9b0d34"
BATCH_ID = "9a7c5e3b-1d2f-4a6b-8c0e-2f4a6c8e0b13"
FIRECRAWL_KEY = "fc-contract-key"
DELIVERED = (0, 1, 3, 5, 7)  # the pages whose webhooks arrive; 2, 4 and 6 are lost
SLOW_PAGE = "https://docs.example.com/guides/slow"


def crawl_documents() -> list[dict[str, Any]]:
    """The 8 documents of the recorded crawl, in Firecrawl's order."""
    return [
        document
        for skip in (0, 3, 6)
        for document in fixture_json("firecrawl_crawl", f"crawl_skip_{skip}.json")["body"]["data"]
    ]


def event(event_type: str, *, crawl_id: str = CRAWL_ID, **fields: Any) -> bytes:
    body = {"success": True, "type": event_type, "id": crawl_id, "webhookId": str(uuid.uuid4()), "data": []}
    body.update(fields)
    return json.dumps(body).encode()


def page_url(document: dict[str, Any]) -> str:
    url: str = document["metadata"]["url"]
    return url


def crawl(client: TestClient, crawl_id: str = CRAWL_ID) -> dict[str, Any]:
    response = client.get(f"/api/crawls/{crawl_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def counts(summary: dict[str, Any]) -> dict[str, int]:
    names = ("received", "recovered", "indexed", "failed", "pending")
    return {name: summary[f"pages_{name}"] for name in names}


@pytest.fixture
def firecrawl() -> Iterator[FirecrawlServer]:
    with serve_firecrawl(api_key=FIRECRAWL_KEY) as server:
        yield server


@pytest.fixture
def client(
    settings: Settings, embedder: LocalModelEmbedder, firecrawl: FirecrawlServer
) -> Iterator[TestClient]:
    configured = settings.model_copy(
        update={
            "embedded_workers": True,
            "firecrawl_url": firecrawl.base_url,
            "firecrawl_api_key": SecretStr(FIRECRAWL_KEY),
            "reconcile_delay_seconds": 1,  # the reconciliation waits in RQ's scheduled registry first
            "rescrape_job_retry_intervals": [1],
        }
    )
    with TestClient(create_app(configured, embedder=embedder)) as test_client:
        yield test_client


@pytest.mark.slow
def test_lost_webhooks_are_recovered_once_and_counted(
    client: TestClient, firecrawl: FirecrawlServer, clean_redis: redis.Redis
) -> None:
    documents = crawl_documents()
    firecrawl.add(CRAWL_ID, documents)
    assert post_webhook(client, event("crawl.started")).status_code == 200
    job_ids = []
    for position in DELIVERED:
        response = post_webhook(client, event("crawl.page", data=[documents[position]]))
        assert response.status_code == 202, response.text
        job_ids.extend(response.json()["job_ids"])
    failed = event(
        "crawl.page", success=False, error="Request timed out", data=[{"metadata": {"sourceURL": SLOW_PAGE}}]
    )
    assert post_webhook(client, failed).json()["status"] == "recorded"
    for job_id in job_ids:
        assert wait_for_job(client, job_id)["status"] == "finished"

    before = crawl(client)
    assert counts(before) == {"received": 6, "recovered": 0, "indexed": 5, "failed": 1, "pending": 0}
    assert (before["status"], before["kind"], before["reconciliations"]) == ("running", "crawl", 0)
    assert before["reconciliation_enabled"] is True
    assert before["last_reconciliation"] is None

    completed = post_webhook(client, event("crawl.completed"))
    assert completed.status_code == 200
    assert completed.json()["status"] == "acknowledged"
    reconcile_job = completed.json()["reconcile_job_id"]
    assert reconcile_job == f"reconcile-crawl-{CRAWL_ID}"
    run = wait_for_job(client, reconcile_job)
    assert run["status"] == "finished", run
    result = run["result"]
    assert (result["outcome"], result["firecrawl_status"], result["firecrawl_total"]) == (
        "succeeded",
        "completed",
        8,
    )
    assert (
        result["pages_listed"],
        result["pages_known"],
        result["pages_recovered"],
        result["pages_failed"],
    ) == (
        8,
        5,
        3,
        0,
    )
    # Exactly the three pages whose webhooks were lost were queued, and they get indexed.
    assert len(result["job_ids"]) == 3
    recovered_urls = set()
    for job_id in result["job_ids"]:
        job = wait_for_job(client, job_id)
        assert job["status"] == "finished", job
        recovered_urls.add(job["result"]["url"])
    assert recovered_urls == {page_url(documents[position]) for position in (2, 4, 6)}
    # Every page was read from the configured Firecrawl, page by page: `next` names an https:// host
    # (as Firecrawl builds it from its Host header), which the client does not follow as given.
    assert firecrawl.requests == [
        f"/v2/crawl/{CRAWL_ID}",
        f"/v2/crawl/{CRAWL_ID}?skip=3",
        f"/v2/crawl/{CRAWL_ID}?skip=6",
    ]

    after = crawl(client)
    assert counts(after) == {"received": 6, "recovered": 3, "indexed": 8, "failed": 1, "pending": 0}
    assert after["status"] == "completed"
    last = after["last_reconciliation"]
    assert (last["outcome"], last["pages_recovered"], last["job_id"], last["error"]) == (
        "succeeded",
        3,
        reconcile_job,
        None,
    )
    assert last["finished_at"] >= last["started_at"]
    tls = search(client, "cert-manager renews the certificate from Let's Encrypt", "keyword")["results"]
    assert tls
    assert tls[0]["url"] == "https://docs.example.com/guides/tls"

    # An operator's second run reads the results again and queues nothing.
    again = client.post(f"/api/crawls/{CRAWL_ID}/reconcile", headers=AUTH)
    assert again.status_code == 202, again.text
    assert again.json() == {
        "status": "queued",
        "crawl_id": CRAWL_ID,
        "kind": "crawl",
        "job_id": reconcile_job,
    }
    second = wait_for_job(client, reconcile_job)
    assert second["status"] == "finished", second
    assert (
        second["result"]["pages_known"],
        second["result"]["pages_recovered"],
        second["result"]["job_ids"],
    ) == (
        8,
        0,
        [],
    )
    # A replayed crawl.completed finds the finished reconciliation and runs none.
    replay = post_webhook(client, event("crawl.completed")).json()
    assert replay["reconcile_job_id"] == reconcile_job
    final = crawl(client)
    assert counts(final) == counts(after)
    assert final["reconciliations"] == 2
    assert len(firecrawl.requests) == 6
    assert Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer).count == 0


def test_a_page_is_pending_until_its_job_ends(settings: Settings, embedder: LocalModelEmbedder) -> None:
    # No consumer runs here: the page stays queued.
    with TestClient(create_app(settings, embedder=embedder)) as client:
        document = crawl_documents()[0]
        response = post_webhook(client, event("crawl.page", data=[document]))
        assert response.status_code == 202
        summary = crawl(client)
        assert counts(summary) == {"received": 1, "recovered": 0, "indexed": 0, "failed": 0, "pending": 1}
        assert summary["status"] == "running"
        # Without CRAWLDEX_FIRECRAWL_URL the completed event is recorded and nothing is queued.
        completed = post_webhook(client, event("crawl.completed")).json()
        assert completed["reconcile_job_id"] is None
        summary = crawl(client)
        assert summary["status"] == "completed"
        assert summary["reconciliation_enabled"] is False
        refused = client.post(f"/api/crawls/{CRAWL_ID}/reconcile", headers=AUTH)
        assert refused.status_code == 409
        assert "CRAWLDEX_FIRECRAWL_URL" in refused.json()["detail"]


def test_crawl_api_refusals(client: TestClient) -> None:
    missing = client.get("/api/crawls/never-heard-of", headers=AUTH)
    assert missing.status_code == 404
    assert "never-heard-of" in missing.json()["detail"]
    assert client.get(f"/api/crawls/{CRAWL_ID}").status_code == 401
    assert client.post(f"/api/crawls/{CRAWL_ID}/reconcile").status_code == 401
    bad_id = client.post("/api/crawls/not%20a%20crawl/reconcile", headers=AUTH)
    assert bad_id.status_code == 422
    assert "not a Firecrawl crawl id" in bad_id.json()["detail"]
    bad_kind = client.post(f"/api/crawls/{CRAWL_ID}/reconcile", params={"kind": "extract"}, headers=AUTH)
    assert bad_kind.status_code == 422


def test_a_crawl_firecrawl_does_not_know_fails_its_reconciliation_at_once(
    client: TestClient, firecrawl: FirecrawlServer
) -> None:
    response = client.post("/api/crawls/0b7e0000-dead-4bee-8f00-000000000000/reconcile", headers=AUTH)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "failed"
    assert "Job not found" in job["error"]
    assert len(firecrawl.requests) == 1  # a 404 is final: no retry
    summary = crawl(client, "0b7e0000-dead-4bee-8f00-000000000000")
    last = summary["last_reconciliation"]
    assert last["outcome"] == "failed"
    assert "Job not found" in last["error"]
    assert counts(summary) == {"received": 0, "recovered": 0, "indexed": 0, "failed": 0, "pending": 0}


async def test_batch_scrape_failures_are_recorded_and_a_running_crawl_is_incomplete(
    services: Services, settings: Settings
) -> None:
    documents = fixture_json("firecrawl_crawl", "batch_scrape_skip_0.json")["body"]["data"]
    indexing = Queue(QUEUE_INDEXING, connection=services.queue.connection, serializer=JSONSerializer)
    with serve_firecrawl() as firecrawl:
        firecrawl.add(BATCH_ID, documents, kind="batch_scrape")
        firecrawl.add(CRAWL_ID, crawl_documents()[:2], status="scraping", total=5)
        async with FirecrawlScraper(firecrawl.base_url) as client:
            first = await reconcile(
                BATCH_ID, "batch_scrape", source=client, crawls=services.crawls, queue=services.queue
            )
            second = await reconcile(
                BATCH_ID, "batch_scrape", source=client, crawls=services.crawls, queue=services.queue
            )
            running = await reconcile(
                CRAWL_ID, "crawl", source=client, crawls=services.crawls, queue=services.queue
            )

    assert (first.outcome, first.pages_recovered, first.pages_failed) == ("succeeded", 1, 1)
    assert (second.pages_recovered, second.pages_failed, second.pages_known) == (0, 0, 2)
    [recovered] = indexing.get_jobs()[:1]
    assert recovered.args[0]["url"] == "https://shop.example.com/products/kettle"
    assert recovered.args[0]["source"] == "reconcile"
    assert recovered.meta["crawl_id"] == BATCH_ID
    summary = await services.crawls.summary(BATCH_ID)
    assert summary is not None
    assert summary.kind == "batch_scrape"
    assert summary.status == "completed"  # no lifecycle webhook came: what Firecrawl said
    assert (summary.pages_received, summary.pages_recovered) == (0, 2)
    assert (summary.pages_failed, summary.pages_pending, summary.pages_indexed) == (1, 1, 0)
    events = await services.crawl_events.list_for_crawl(BATCH_ID)
    assert [(e.event_type, e.url, e.success) for e in events] == [
        ("batch_scrape.page", "https://shop.example.com/products/discontinued", False)
    ]
    assert "404" in (events[0].error or "")

    assert (running.outcome, running.firecrawl_status, running.pages_recovered) == (
        "incomplete",
        "scraping",
        2,
    )
    assert indexing.count == 3
    assert (await services.crawls.summary(CRAWL_ID)).status == "running"  # type: ignore[union-attr]


# The page bookkeeping, on PostgreSQL and on SQLite (the embedded mode).


@pytest.fixture(params=["postgresql", "sqlite"])
def crawl_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("fresh_database")
        return url
    url = f"sqlite+aiosqlite:///{tmp_path / 'crawldex.db'}"
    asyncio.run(upgrade(url))
    return url


@pytest.fixture
async def crawls(crawl_database_url: str) -> AsyncIterator[CrawlRepository]:
    database = Database.connect(crawl_database_url)
    yield CrawlRepository(database)
    await database.dispose()


def page(path: str, *, seconds: int = 0, source: str = "crawl.page") -> PageDocument:
    return PageDocument(
        url=f"https://docs.example.com{path}",
        markdown="text",
        crawl_id=CRAWL_ID,
        source=source,
        received_at=utc_now().replace(microsecond=0) + timedelta(seconds=seconds),
    )


class CountingCrawls(CrawlRepository):
    """The real repository, counting its writes (each one transaction)."""

    writes: list[int]

    async def record_deliveries(self, deliveries: Any, **kwargs: Any) -> None:
        self.writes.append(len(deliveries))
        await super().record_deliveries(deliveries, **kwargs)


async def test_concurrent_deliveries_are_written_together(crawl_database_url: str) -> None:
    database = Database.connect(crawl_database_url)
    crawls = CountingCrawls(database)
    crawls.writes = []
    recorder = ReceivedPagesRecorder(crawls, max_deliveries_per_write=16)
    try:
        # 40 webhooks at once, two crawls, one page delivered twice (the newer delivery wins).
        pages = [(page(f"/c{i}"), f"job-c{i}", CRAWL_ID if i % 2 else "crawl-two") for i in range(40)]
        again = page("/c1", seconds=5)
        await asyncio.gather(
            *(recorder.record(crawl_id, [(p, job)]) for p, job, crawl_id in pages),
            recorder.record(CRAWL_ID, [(again, "job-again")]),
        )
        await recorder.flush()
        # All 41 arrived before the writer's first turn: batches of at most 16, in arrival order.
        assert crawls.writes == [16, 16, 9]
        first, second = await crawls.summary(CRAWL_ID), await crawls.summary("crawl-two")
        assert first is not None
        assert second is not None
        assert (first.pages_received, first.pages_pending, second.pages_received) == (20, 20, 20)
        await record_index_end(crawls, pages[1][0], "job-c1", failed=False)  # the older delivery's job
        after = await crawls.summary(CRAWL_ID)
        assert after is not None
        assert after.pages_pending == 20
        await recorder.record(None, [(page("/no-crawl"), "job-x")])  # not a crawl's page: nothing to write
        await recorder.record(CRAWL_ID, [])
        assert crawls.writes == [16, 16, 9, 1]  # and record_index_end's write
    finally:
        await database.dispose()


async def test_a_trickle_of_deliveries_is_gathered_into_one_write(crawl_database_url: str) -> None:
    database = Database.connect(crawl_database_url)
    crawls = CountingCrawls(database)
    crawls.writes = []
    # Gathering far longer than the test: only a write's worth in line, or a flush, starts a write.
    recorder = ReceivedPagesRecorder(crawls, max_deliveries_per_write=4, gather_seconds=60)
    try:
        for number in range(3):  # one webhook at a time, a few milliseconds apart
            await recorder.record(CRAWL_ID, [(page(f"/t{number}"), f"job-t{number}")])
            await asyncio.sleep(0.005)
        assert crawls.writes == []  # gathered, not written one by one
        await recorder.record(CRAWL_ID, [(page("/t3"), "job-t3")])  # a write's worth: written at once
        for _ in range(500):
            if crawls.writes:
                break
            await asyncio.sleep(0.01)
        assert crawls.writes == [4]
        for number in (4, 5):
            await recorder.record(CRAWL_ID, [(page(f"/t{number}"), f"job-t{number}")])
        await asyncio.wait_for(recorder.flush(), 10)  # does not wait out the gathering
        assert crawls.writes == [4, 2]
        summary = await crawls.summary(CRAWL_ID)
        assert summary is not None
        assert summary.pages_received == 6
    finally:
        await database.dispose()


class HeldCrawls(CrawlRepository):
    """The real repository, whose writes wait until ``release`` is set (a slow database)."""

    release: asyncio.Event
    writes: list[int]

    async def record_deliveries(self, deliveries: Any, **kwargs: Any) -> None:
        self.writes.append(len(deliveries))
        await self.release.wait()
        await super().record_deliveries(deliveries, **kwargs)


def held_crawls(database: Database) -> HeldCrawls:
    crawls = HeldCrawls(database)
    crawls.release, crawls.writes = asyncio.Event(), []
    return crawls


async def test_a_webhook_does_not_wait_for_its_pages_record(crawl_database_url: str) -> None:
    database = Database.connect(crawl_database_url)
    crawls = held_crawls(database)
    recorder = ReceivedPagesRecorder(crawls, gather_seconds=0)  # each write takes what is in line at once
    try:
        await asyncio.wait_for(recorder.record(CRAWL_ID, [(page("/w1"), "job-w1")]), 5)
        await asyncio.wait_for(recorder.record(CRAWL_ID, [(page("/w2"), "job-w2")]), 5)
        flushed = asyncio.ensure_future(recorder.flush())
        await asyncio.sleep(0.05)
        assert not flushed.done()  # the first write is held: both records returned before it
        assert crawls.writes == [1]
        crawls.release.set()
        await asyncio.wait_for(flushed, 10)
        assert crawls.writes == [1, 1]  # the second arrived while the first was in flight
        summary = await crawls.summary(CRAWL_ID)
        assert summary is not None
        assert (summary.pages_received, summary.pages_pending) == (2, 2)
    finally:
        await database.dispose()


async def test_a_database_behind_by_more_than_the_limit_slows_webhooks_down(crawl_database_url: str) -> None:
    database = Database.connect(crawl_database_url)
    crawls = held_crawls(database)
    recorder = ReceivedPagesRecorder(crawls, max_waiting=2, gather_seconds=0)
    try:
        await recorder.record(CRAWL_ID, [(page("/b0"), "job-b0")])  # taken by the held write
        await asyncio.sleep(0)
        for number in (1, 2):  # in line, up to the limit
            await asyncio.wait_for(recorder.record(CRAWL_ID, [(page(f"/b{number}"), f"job-b{number}")]), 5)
        third = asyncio.ensure_future(recorder.record(CRAWL_ID, [(page("/b3"), "job-b3")]))
        await asyncio.sleep(0.05)
        assert not third.done()  # over the limit: it waits for its own write
        crawls.release.set()
        await asyncio.wait_for(third, 10)
        summary = await crawls.summary(CRAWL_ID)
        assert summary is not None
        assert summary.pages_received == 4
    finally:
        await database.dispose()


async def test_pages_in_line_at_shutdown_are_written_before_the_database_closes(
    settings: Settings, embedder: LocalModelEmbedder, fresh_database: str
) -> None:
    services = await Services.start(settings, embedder=embedder)
    crawls = held_crawls(services.database)
    services.received_pages = ReceivedPagesRecorder(crawls)
    await services.received_pages.record(CRAWL_ID, [(page("/s1"), "job-s1")])
    asyncio.get_running_loop().call_later(0.2, crawls.release.set)  # a write still in flight at shutdown

    await services.aclose()

    database = Database.connect(fresh_database)
    try:
        summary = await CrawlRepository(database).summary(CRAWL_ID)
        assert summary is not None
        assert summary.pages_received == 1
    finally:
        await database.dispose()


def failed_records() -> float:
    return REGISTRY.get_sample_value("crawldex_received_page_records_failed_total") or 0.0


async def test_a_write_that_fails_is_logged_and_leaves_nobody_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = Database.connect("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    recorder = ReceivedPagesRecorder(CrawlRepository(database), max_waiting=2)
    failed_before = failed_records()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(recorder.record(CRAWL_ID, [(page(f"/e{i}"), f"job-e{i}")]) for i in range(5))),
            30,
        )
        await asyncio.wait_for(recorder.flush(), 30)
        assert "could not record" in caplog.text
        assert CRAWL_ID in caplog.text
        assert failed_records() == failed_before + 5
    finally:
        await database.dispose()


async def test_page_states_follow_the_newest_delivery_in_any_order(crawls: CrawlRepository) -> None:
    async def state() -> dict[str, int]:
        summary = await crawls.summary(CRAWL_ID)
        assert summary is not None
        return {
            "received": summary.pages_received,
            "recovered": summary.pages_recovered,
            "indexed": summary.pages_indexed,
            "failed": summary.pages_failed,
            "pending": summary.pages_pending,
        }

    assert await crawls.summary(CRAWL_ID) is None
    fast = page("/fast")
    # The index job ends before the webhook's write lands: the late write must not set it back to pending.
    await record_index_end(crawls, fast, "job-fast", failed=False)
    await record_received(crawls, CRAWL_ID, [(fast, "job-fast")])
    # A replay of a delivery (same job) after its job ended changes nothing either.
    await record_received(
        crawls, CRAWL_ID, [(fast.model_copy(update={"received_at": utc_now()}), "job-fast")]
    )
    assert await state() == {"received": 1, "recovered": 0, "indexed": 1, "failed": 0, "pending": 0}

    # A newer delivery of a page takes the row over; the older delivery's job ending later does not.
    old, new = page("/changing"), page("/changing", seconds=5)
    await record_received(crawls, CRAWL_ID, [(old, "job-old")])
    await record_received(crawls, CRAWL_ID, [(new, "job-new")])
    await record_index_end(crawls, old, "job-old", failed=False)
    assert (await state())["pending"] == 1
    await record_index_end(crawls, new, "job-new", failed=True, error="TimeoutError")
    assert await state() == {"received": 2, "recovered": 0, "indexed": 1, "failed": 1, "pending": 0}
    # A failed job that is requeued by hand and succeeds ends indexed.
    await record_index_end(crawls, new, "job-new", failed=False)
    # Recovered pages count apart; one statement takes many pages (one row each).
    recovered = [page(f"/r{i}", source="reconcile") for i in range(3)]
    await record_received(
        crawls, CRAWL_ID, [(p, f"job-r{i}") for i, p in enumerate(recovered)] + [(recovered[0], "job-r0")]
    )
    assert await state() == {"received": 2, "recovered": 3, "indexed": 2, "failed": 0, "pending": 3}
    assert await crawls.known_urls(
        CRAWL_ID, [canonicalize_url(fast.url), "https://docs.example.com/other"]
    ) == {canonicalize_url(fast.url)}
    assert await crawls.summary("another-crawl") is None


async def test_deliveries_of_one_page_in_one_write_leave_what_writing_them_in_turn_leaves(
    crawls: CrawlRepository, crawl_database_url: str
) -> None:
    """PostgreSQL writes a batch as one statement, SQLite a statement a row: the same rows either way."""
    at = utc_now().replace(microsecond=0)

    def delivery(path: str, job_id: str, seconds: int = 0) -> PageDelivery:
        url = f"https://docs.example.com{path}"
        return PageDelivery(url, url, "crawl.page", job_id, at + timedelta(seconds=seconds))

    await crawls.record_deliveries(
        [
            (CRAWL_ID, [delivery("/a", "job-a1")]),
            (CRAWL_ID, [delivery("/a", "job-a2", seconds=5), delivery("/b", "job-b2", seconds=5)]),
            (CRAWL_ID, [delivery("/a", "job-a1"), delivery("/b", "job-b1")]),  # older, after the newer
            ("other-crawl", [delivery("/a", "job-other")]),  # the same page of another crawl is its own row
            (CRAWL_ID, [delivery("/nul\x00", "job-nul")]),  # U+0000 is written as U+FFFD, as for one row
        ]
    )
    # The same job's end, twice in one batch, after its delivery: the row ends indexed.
    await crawls.record_deliveries(
        [
            (CRAWL_ID, [delivery("/a", "job-a2", seconds=5)]),
            (CRAWL_ID, [delivery("/a", "job-a2", seconds=5)]),
        ],
        state=CrawlPageState.INDEXED,
    )

    database = Database.connect(crawl_database_url)
    try:
        async with database.statement() as conn:
            rows = (
                await conn.execute(
                    select(CrawlPage.crawl_id, CrawlPage.url, CrawlPage.job_id, CrawlPage.state).order_by(
                        CrawlPage.crawl_id, CrawlPage.url
                    )
                )
            ).all()
    finally:
        await database.dispose()
    assert [tuple(row) for row in rows] == [
        (CRAWL_ID, "https://docs.example.com/a", "job-a2", "indexed"),
        (CRAWL_ID, "https://docs.example.com/b", "job-b2", "pending"),
        (CRAWL_ID, "https://docs.example.com/nul\ufffd", "job-nul", "pending"),
        ("other-crawl", "https://docs.example.com/a", "job-other", "pending"),
    ]
