"""Chaos: signed webhooks for 1,000 pages and change notifications, while the system is broken on purpose.

Index-worker processes are SIGKILLed at random moments (one runs at a time: the embedded Qdrant store is
single-process, so each new worker opens the store its predecessor was killed over), Redis crashes once
(SIGKILL, restarted from its append-only file), PostgreSQL restarts once (fast shutdown), and the embedder
(a server speaking TEI's HTTP API, backed by the real model) answers 503 to every fifth call. Senders retry
what was refused, as Firecrawl's and changedetection.io's operators would.

At the end, every page is in the index exactly once: the points are exactly the chunks the project's own
cleaner and chunker make of the last version of each page, one per (url, chunk_index); every document row
is indexed; every change event is closed; every job finished.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from qdrant_client import QdrantClient
from rq.job import Job
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from crawldex.adapters.web_fetcher import html_to_markdown
from crawldex.chunking import Chunker, load_tokenizer
from crawldex.cleaning import clean_markdown
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings
from crawldex.webhooks.firecrawl import sign
from tests.conftest import API_TOKEN, WEBHOOK_SECRET
from tests.deliveries import crawl_page_delivery
from tests.e2e.conftest import BIN, free_port
from tests.e2e.private_services import PrivatePostgres, PrivateRedis, kill_group
from tests.pages import PageSite, serve_pages

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# Firecrawl pages, each its own signed crawl.page delivery (fewer with CRAWLDEX_CHAOS_PAGES, to debug the test)
PAGES = int(os.environ.get("CRAWLDEX_CHAOS_PAGES", "1000"))
CHANGED = 40  # of them served by a local site, changed, and re-fetched on a changedetection.io notification
CHANGE_TOKEN = "chaos-change-token"
INDEX_RETRIES = 20
SEND_RATE = 25.0  # deliveries a second: the faults must land while pages are still coming in
DRAIN_TIMEOUT = 1500.0
WORDS = [
    "river",
    "canyon",
    "glacier",
    "meadow",
    "harbor",
    "lantern",
    "orchard",
    "quarry",
    "summit",
    "tundra",
    "valley",
    "willow",
    "basalt",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "granite",
    "heron",
    "island",
    "juniper",
    "kelp",
    "lagoon",
    "marble",
    "nectar",
    "oasis",
    "pebble",
    "quartz",
    "reef",
    "saffron",
    "thistle",
    "umber",
    "violet",
    "walnut",
    "yarrow",
    "zephyr",
    "anchor",
    "beacon",
    "compass",
    "dune",
    "estuary",
    "falcon",
    "grove",
]


def page_markdown(rng: random.Random, number: int, version: int) -> str:
    """Mostly one chunk; every tenth page several, so re-runs must leave no stale tail behind."""
    paragraphs = 6 if number % 10 == 0 else 1
    body = "\n\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90))) + "." for _ in range(paragraphs)
    )
    return f"# Page {number} version {version}\n\n{body}\n"


@dataclass
class SendReport:
    sent: int = 0
    attempts: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # retried answers: "503", "429", "connection"
    job_ids: list[str] = field(default_factory=list)
    change_event_ids: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def send_until_accepted(
    client: httpx.Client, path: str, body: bytes, headers: dict[str, str], report: SendReport
) -> Any:
    """What a sender's retry policy does: 503/429 wait (Retry-After, capped at 1 s), a dead socket retries."""
    while True:
        report.attempts += 1
        try:
            response = client.post(path, content=body, headers=headers)
        except httpx.TransportError:
            report.refused["connection"] += 1
            time.sleep(0.2)
            continue
        if response.status_code in (429, 503):
            report.refused[str(response.status_code)] += 1
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 1.0))
            continue
        if response.status_code != 202:
            report.errors.append(f"{path}: {response.status_code} {response.text[:300]}")
            return None
        report.sent += 1
        return response.json()


class Supervisor:
    """Keeps one index-worker running, kills it at random, and counts the jobs its deaths interrupted."""

    def __init__(self, env: dict[str, str], logs: Path, redis_server: PrivateRedis, seed: int) -> None:
        self.env = env
        self.logs = logs
        self.redis_server = redis_server
        self.rng = random.Random(seed)
        self.worker: subprocess.Popen[bytes] | None = None
        self.started = 0
        self.kills = 0
        self.interrupted_jobs: set[str] = set()

    def ensure_running(self) -> subprocess.Popen[bytes]:
        if self.worker is None or self.worker.poll() is not None:
            self.started += 1
            log = (self.logs / f"index-worker-{self.started}.log").open("wb")
            self.worker = subprocess.Popen(
                [str(BIN / "crawldex-index-worker")],
                env={**self.env, "CRAWLDEX_METRICS_PORT": str(free_port())},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.worker

    def current_job(self) -> str | None:
        """The job the running worker holds, as RQ records it (None while Redis is away)."""
        worker = self.worker
        if worker is None:
            return None
        try:
            connection = redis.Redis.from_url(self.redis_server.url, socket_timeout=2, decode_responses=True)
            for key in connection.smembers("rq:workers:indexing"):
                if f".{worker.pid}.index-worker" in key:
                    job = connection.hget(key, "current_job")
                    return str(job) if job else None
        except redis.RedisError:
            return None
        return None

    def wait_until_serving(self, timeout: float = 120) -> None:
        """Until the worker has registered with RQ: a kill before then would test nothing."""
        worker = self.ensure_running()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                connection = redis.Redis.from_url(
                    self.redis_server.url, socket_timeout=2, decode_responses=True
                )
                if any(
                    f".{worker.pid}.index-worker" in key for key in connection.smembers("rq:workers:indexing")
                ):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)

    def kill(self) -> None:
        worker = self.ensure_running()
        job = self.current_job()
        kill_group(worker)
        self.kills += 1
        if job:
            self.interrupted_jobs.add(job)

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(60)
            except subprocess.TimeoutExpired:
                kill_group(self.worker)


@dataclass
class Chaos:
    tmp: Path
    redis_server: PrivateRedis
    postgres: PrivatePostgres
    site: PageSite
    env: dict[str, str]
    api_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, command: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    rescrape_starts: int = 0
    rescrape_worker: subprocess.Popen[bytes] | None = None

    def log_tail(self, name: str, size: int = 3000) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-size:]

    def keep_rescrape_worker_running(self) -> None:
        """As Kubernetes would: a worker that exited (it cannot start while Redis is down) is started again."""
        if self.rescrape_worker is None or self.rescrape_worker.poll() is not None:
            self.rescrape_starts += 1
            self.rescrape_worker = self.start(
                f"rescrape-worker-{self.rescrape_starts}",
                [str(BIN / "crawldex-rescrape-worker")],
                CRAWLDEX_METRICS_PORT=str(free_port()),
            )


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    redis_server = PrivateRedis(tmp_path / "redis")
    postgres = PrivatePostgres()
    tei_port, api_port = free_port(), free_port()
    with serve_pages() as site:
        redis_server.start()
        postgres.start()
        env = {
            **os.environ,
            "CRAWLDEX_REDIS_URL": redis_server.url,
            "CRAWLDEX_DATABASE_URL": postgres.url,
            "CRAWLDEX_TEI_URL": f"http://127.0.0.1:{tei_port}",
            "CRAWLDEX_TEI_MAX_RETRIES": "0",  # an embedder failure fails the job: RQ's retries must cope
            "CRAWLDEX_API_TOKEN": API_TOKEN,
            "CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CRAWLDEX_CHANGEDETECTION_TOKEN": CHANGE_TOKEN,
            "CRAWLDEX_FETCH_ALLOWED_HOSTS": '["127.0.0.1"]',
            "CRAWLDEX_DATA_DIR": str(tmp_path / "data"),  # the one embedded store every index-worker opens
            "CRAWLDEX_QDRANT_COLLECTION": "chaos",
            "CRAWLDEX_INDEX_JOB_RETRIES": str(INDEX_RETRIES),
            "CRAWLDEX_INDEX_JOB_RETRY_INTERVALS": "[1, 2, 4]",
            "CRAWLDEX_RESCRAPE_JOB_RETRIES": str(INDEX_RETRIES),
            "CRAWLDEX_RESCRAPE_JOB_RETRY_INTERVALS": "[1, 2, 4]",
            "CRAWLDEX_RESCRAPE_JOB_TIMEOUT_SECONDS": "30",
            "CRAWLDEX_WORKER_HEARTBEAT_SECONDS": "1",
            "CRAWLDEX_WORKER_MAINTENANCE_SECONDS": "5",
            "CRAWLDEX_RATE_LIMIT_WEBHOOK_PER_MINUTE": "100000",
            "CRAWLDEX_LOG_LEVEL": "INFO",
            "HF_HUB_OFFLINE": "1",
        }
        state = Chaos(tmp_path, redis_server, postgres, site, env, f"http://127.0.0.1:{api_port}")
        try:
            state.start(
                "tei",
                [sys.executable, "-m", "tests.e2e.tei_contract_server", "--port", str(tei_port), "--unavailable-every", "5"],
            )  # fmt: skip
            wait_for_http(f"http://127.0.0.1:{tei_port}/health", state, "tei")
            state.start("ingest-api", [str(BIN / "crawldex-ingest-api")], CRAWLDEX_PORT=str(api_port),
                        CRAWLDEX_DATA_DIR=str(tmp_path / "api-data"))  # fmt: skip
            wait_for_http(f"{state.api_url}/readyz", state, "ingest-api")
            state.keep_rescrape_worker_running()
            yield state
        finally:
            for process in reversed(state.processes):
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        kill_group(process)
            redis_server.stop()
            postgres.stop()


def wait_for_http(url: str, state: Chaos, name: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{name} not ready within {timeout}s:\n{state.log_tail(name)}")


def expected_chunks(markdown_by_url: dict[str, str], max_input_tokens: int) -> set[tuple[str, int, str]]:
    settings = Settings()
    chunker = Chunker(
        load_tokenizer(settings.tokenizer_path),
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
        max_input_tokens=max_input_tokens,
    )
    return {
        (url, chunk.index, chunk.text)
        for url, markdown in markdown_by_url.items()
        for chunk in chunker.chunk(clean_markdown(markdown))
    }


def test_nothing_is_lost_or_duplicated_under_chaos(chaos: Chaos, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    rng = random.Random(20261202)
    final_markdown: dict[str, str] = {}
    bodies: list[bytes] = []
    for number in range(PAGES):
        if number < CHANGED:
            path = f"/changing/{number}"
            url = chaos.site.base_url + path
            version_2 = page_markdown(rng, number, 2)
            html = PageSite.html(
                f"Page {number}", "".join(f"<p>{p}</p>" for p in version_2.split("\n\n")[1:])
            )
            chaos.site.set(path, html)
            final_markdown[url] = html_to_markdown(
                html.encode(), encoding="utf-8"
            ).markdown  # what the re-fetch indexes
            markdown = page_markdown(rng, number, 1)  # what Firecrawl crawled before the change
        else:
            url = f"https://chaos.example/doc/{number}"
            markdown = page_markdown(rng, number, 1)
            final_markdown[url] = markdown
        bodies.append(
            crawl_page_delivery(url, markdown, webhook_id=f"chaos-{number}", crawl_id="chaos-crawl")
        )

    report = SendReport()
    supervisor = Supervisor(chaos.env, chaos.tmp, chaos.redis_server, seed=7)
    sending_done = threading.Event()

    def send_all() -> None:
        with httpx.Client(base_url=chaos.api_url, timeout=10) as client:
            for number, body in enumerate(bodies):
                pace_until = started + number / SEND_RATE
                time.sleep(max(0.0, pace_until - time.monotonic()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Firecrawl-Signature": sign(WEBHOOK_SECRET, body),
                }
                accepted = send_until_accepted(client, "/api/webhook/firecrawl", body, headers, report)
                if accepted:
                    report.job_ids.extend(accepted["job_ids"])
            for number in range(CHANGED):  # the pages changed: changedetection.io notices
                body = json.dumps(
                    {"url": f"{chaos.site.base_url}/changing/{number}", "title": "changed"}
                ).encode()
                headers = {"Content-Type": "application/json", "X-Crawldex-Token": CHANGE_TOKEN}
                accepted = send_until_accepted(client, "/api/webhook/changedetection", body, headers, report)
                if accepted:
                    report.change_event_ids.append(accepted["change_event_id"])
        sending_done.set()

    def break_servers() -> None:
        """Redis crashes when 30 % of the pages are in, PostgreSQL restarts at 60 %: while webhooks arrive."""
        faults: list[tuple[float, Callable[[], None]]] = [
            (0.3, partial(chaos.redis_server.crash_and_restart, down_seconds=2.0)),
            (0.6, chaos.postgres.restart),
        ]
        for share, fault in faults:
            while report.sent < PAGES * share and not sending_done.is_set():
                time.sleep(0.05)
            fault()

    sender = threading.Thread(target=send_all, name="sender", daemon=True)
    breaker = threading.Thread(target=break_servers, name="breaker", daemon=True)
    sender.start()
    breaker.start()
    supervisor.ensure_running()
    minimum_kills = 12
    while not sending_done.is_set() or supervisor.kills < minimum_kills:
        supervisor.wait_until_serving()
        time.sleep(supervisor.rng.uniform(0.5, 6.0))
        supervisor.kill()
        chaos.keep_rescrape_worker_running()
    sender.join()
    breaker.join()
    assert chaos.redis_server.crashes == 1
    assert chaos.postgres.restarts == 1
    chaos_ended = time.monotonic()

    # Drain: no more faults but the embedder's; the last worker finishes what is left.
    connection = redis.Redis.from_url(chaos.redis_server.url)
    jobs = report.job_ids
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        supervisor.ensure_running()
        chaos.keep_rescrape_worker_running()
        fetched = Job.fetch_many(jobs, connection=connection, serializer=JSONSerializer)
        statuses = Counter(job.get_status(refresh=False).value if job else "missing" for job in fetched)
        open_events = open_change_events(chaos.postgres.url)
        if statuses == Counter({"finished": len(jobs)}) and open_events == 0 and queues_empty(connection):
            break
        time.sleep(1.0)
    else:
        raise AssertionError(
            f"not drained in {DRAIN_TIMEOUT}s: jobs {statuses}, open change events {open_events}\n"
            f"{supervisor_log_tail(chaos, supervisor)}"
        )
    drained = time.monotonic()

    retried = 0
    for job in Job.fetch_many(jobs, connection=connection, serializer=JSONSerializer):
        assert job is not None
        retried += INDEX_RETRIES - (job.retries_left or 0)
    for job_id in supervisor.interrupted_jobs:  # recovered: each job a SIGKILL cut short ran again to its end
        interrupted = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        assert interrupted.get_status() == "finished", (job_id, interrupted.get_status())
    supervisor.stop()

    assert not report.errors, report.errors[:5]
    assert report.sent == PAGES + CHANGED
    assert len(set(jobs)) == PAGES, "one job per page"

    tei_info = httpx.get(chaos.env["CRAWLDEX_TEI_URL"] + "/info").json()
    expected = expected_chunks(final_markdown, int(tei_info["max_input_length"]))
    store = QdrantClient(path=str(chaos.tmp / "data" / "qdrant"))
    try:
        points, offset = [], None
        while True:
            batch, offset = store.scroll("chaos", limit=1000, offset=offset, with_payload=True)
            points.extend(batch)
            if offset is None:
                break
    finally:
        store.close()
    indexed = Counter((p.payload["url"], p.payload["chunk_index"]) for p in points if p.payload)
    duplicates = [key for key, count in indexed.items() if count > 1]
    assert not duplicates, duplicates[:5]
    actual = {(p.payload["url"], p.payload["chunk_index"], p.payload["text"]) for p in points if p.payload}
    assert len(points) == len(expected), f"{len(points)} points, {len(expected)} chunks expected"
    assert actual == expected, (sorted(actual - expected)[:3], sorted(expected - actual)[:3])

    rows = documents(chaos.postgres.url)
    assert len(rows) == PAGES
    assert {status for _, status, _ in rows} == {"indexed"}
    chunk_counts = Counter(url for url, _, _ in expected)
    assert {url: count for url, _, count in rows} == dict(chunk_counts)
    assert change_event_statuses(chaos.postgres.url) == {"indexed": CHANGED}

    with capsys.disabled():  # the figures belong in make test's output
        print(
            f"\nchaos: sent {report.sent} deliveries ({PAGES} pages, {CHANGED} change notifications) in "
            f"{report.attempts} requests (refused and retried by the sender: {dict(report.refused)}); "
            f"indexed {len(rows)} documents, {len(points)} chunks (expected {len(expected)}), 0 duplicates; "
            f"index jobs retried {retried} times; {supervisor.kills} index-workers SIGKILLed "
            f"({supervisor.started} started), {len(supervisor.interrupted_jobs)} jobs interrupted mid-run and "
            f"recovered; Redis crashed {chaos.redis_server.crashes}x, PostgreSQL restarted "
            f"{chaos.postgres.restarts}x; rescrape-worker started {chaos.rescrape_starts}x; embedder failing 1 call "
            "in 5; "
            f"duration {drained - started:.0f} s (chaos {chaos_ended - started:.0f} s, drain {drained - chaos_ended:.0f} s)"
        )


def query(database_url: str, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            return list(await connection.fetch(sql))
        finally:
            await connection.close()

    return asyncio.run(run())


def open_change_events(database_url: str) -> int:
    [row] = query(
        database_url,
        "SELECT count(*) FROM change_events WHERE status NOT IN ('indexed', 'unchanged', 'gone', 'failed')",
    )
    return int(row[0])


def change_event_statuses(database_url: str) -> dict[str, int]:
    return {
        r["status"]: r["n"]
        for r in query(database_url, "SELECT status, count(*) AS n FROM change_events GROUP BY 1")
    }


def documents(database_url: str) -> list[tuple[str, str, int]]:
    return [
        (r["url"], r["status"], r["chunk_count"])
        for r in query(database_url, "SELECT url, status, chunk_count FROM documents")
    ]


def queues_empty(connection: redis.Redis) -> bool:
    for name in (QUEUE_INDEXING, QUEUE_RESCRAPE):
        if connection.llen(f"rq:queue:{name}") or StartedJobRegistry(name, connection=connection).count:
            return False
        if ScheduledJobRegistry(name, connection=connection).count:  # type: ignore[no-untyped-call]
            return False
    return True


def supervisor_log_tail(chaos: Chaos, supervisor: Supervisor) -> str:
    return "\n".join(
        [
            f"--- index-worker-{supervisor.started}:",
            chaos.log_tail(f"index-worker-{supervisor.started}"),
            f"--- rescrape-worker-{chaos.rescrape_starts}:",
            chaos.log_tail(f"rescrape-worker-{chaos.rescrape_starts}"),
            "--- ingest-api:",
            chaos.log_tail("ingest-api"),
        ]
    )
