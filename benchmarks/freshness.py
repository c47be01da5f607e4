"""Benchmarks 5 and 6 (part): freshness in the embedded mode (change notification → new text searchable)
and the peak RSS of that process; then the peak RSS of a real index-worker process under load."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import redis
from tests.pages import PageSite, serve_pages

from benchmarks.common import (
    BIN,
    REDIS_URL,
    Process,
    Report,
    Resident,
    Row,
    api_env,
    doc_url,
    flush_redis,
    free_port,
    load_scifact,
    percentile,
    postgres_database,
    progress,
    resident_mb,
    temp_dir,
    vm_hwm_mb,
    wait_ready,
)
from crawldex.adapters.queue import JobQueue
from crawldex.config import Settings
from crawldex.models import PageDocument

CHANGE_TOKEN = "bench-change-token"  # noqa: S105
WORKER_TARGET_MB = 700.0


def run(quick: bool = False) -> Report:
    report = Report("freshness")
    trials = 5 if quick else 10
    flush_redis()
    with temp_dir("freshness") as tmp, serve_pages() as site:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = api_env(
            Path(tmp) / "data",
            port,
            None,
            CRAWLDEX_EMBEDDED_WORKERS="true",
            CRAWLDEX_CHANGEDETECTION_TOKEN=CHANGE_TOKEN,
            CRAWLDEX_FETCH_ALLOWED_HOSTS='["127.0.0.1"]',
        )
        progress("freshness: starting ingest-api in the embedded mode")
        api = Process([str(BIN / "crawldex-ingest-api")], env, Path(tmp) / "api.log")
        try:
            wait_ready(api, base)
            latencies = _trials(site, base, trials)
            rss = vm_hwm_mb(api.pid)
            resting = resident_mb(api.pid)
        finally:
            api.stop()
    report.rows.append(
        Row(
            "5 freshness",
            "change notification → searchable, p50 / p95 s",
            f"{percentile(latencies, 50):.2f} / {percentile(latencies, 95):.2f}",
            baseline=f"{len(latencies)} changes, min {min(latencies):.2f} s",
        )
    )
    report.rows.append(
        Row(
            "6 memory",
            "peak RSS, ingest-api in the embedded mode (model + workers)",
            f"{rss:.0f} MB",
            baseline=f"VmHWM; at the end {resting}",
        )
    )
    report.notes.append(
        "Freshness: crawldex-ingest-api with CRAWLDEX_EMBEDDED_WORKERS=true (SQLite, embedded Qdrant, in-process "
        "rescrape and index consumers); a local page (tests/pages.py) gets a new unique word, then the "
        'changedetection.io notification {"url": ...} is POSTed with X-Crawldex-Token; the clock runs from '
        "just before the POST until /api/search (keyword mode) returns a chunk holding the word, polled every "
        f"20 ms; {trials} changes of the same page, one after another."
    )
    _worker_memory(quick, report)
    return report


def _trials(site: PageSite, base: str, trials: int) -> list[float]:
    headers = {"Authorization": "Bearer bench-token"}
    latencies: list[float] = []
    with httpx.Client(timeout=30) as client:
        for i in range(trials + 1):
            word = f"fresh{uuid.uuid4().hex[:12]}"
            url = site.set(
                "/page",
                PageSite.html(
                    "Freshness", f"<h1>Freshness</h1><p>Revision {i} of this page mentions {word} today.</p>"
                ),
            )
            started = time.perf_counter()
            answer = client.post(
                f"{base}/api/webhook/changedetection",
                json={"url": url},
                headers={"X-Crawldex-Token": CHANGE_TOKEN},
            )
            answer.raise_for_status()
            while True:
                found = client.post(
                    f"{base}/api/search", json={"query": word, "mode": "keyword", "limit": 1}, headers=headers
                ).json()
                if any(word in r["text"] for r in found["results"]):
                    break
                if time.perf_counter() - started > 60:
                    raise RuntimeError(f"{word} not searchable after 60 s")
                time.sleep(0.02)
            if i > 0:  # the first change also creates the document: a warm-up
                latencies.append(time.perf_counter() - started)
    return latencies


def _worker_memory(quick: bool, report: Report) -> None:
    """A real crawldex-index-worker process indexing SciFact pages; VmHWM sampled after its burst."""
    import asyncio

    data = load_scifact()
    # Sustained, not a burst: the heap's growth over hundreds of pages is what a long-running worker sees.
    pages = 100 if quick else 300
    flush_redis()
    progress(f"memory: crawldex-index-worker on {pages} queued pages")

    async def with_database() -> tuple[float, Resident]:
        async with postgres_database() as database_url:
            return await asyncio.to_thread(_worker_run, database_url, data.corpus, pages)

    rss, largest = asyncio.run(with_database())
    report.notes.append(
        f"Index-worker memory: a crawldex-index-worker process (the in-process model, PostgreSQL, embedded "
        f"Qdrant, up to {Settings().index_batch_pages} queued jobs a batch) on {pages} SciFact abstracts queued "
        "beforehand; its VmHWM after the burst. Beside it, its resident memory at the largest of the samples "
        "taken every 0.5 s: anonymous (RssAnon) and file-backed (RssFile + RssShmem: the mapped libraries and "
        "the model's weights), and of the latter the file with the most resident pages (/proc/<pid>/smaps). "
        "That file's part depends on how it came into the page cache, not on the worker: libtorch_cpu.so read "
        "in by the process's own page faults has ~60 MB of it resident; after the file was read through "
        "(copied, unpacked, scanned) the page cache holds it in large folios, a fault maps the whole folio, and "
        "140-175 MB of it are resident: shared, clean pages (benchmarks/ANALYSIS.md)."
    )
    report.rows.append(
        Row(
            "6 memory",
            f"peak RSS, index-worker under load ({pages} pages)",
            f"{rss:.0f} MB ({largest} at the largest sample)",
            baseline=f"limit {WORKER_TARGET_MB:.0f} MB",
            ratio=f"{rss / WORKER_TARGET_MB:.0%}",
            target="≤ 700 MB",
            passed=rss <= WORKER_TARGET_MB,
        )
    )


def _worker_run(database_url: str, corpus: dict[str, str], pages: int) -> tuple[float, Resident]:
    """The worker's VmHWM after its burst, and its resident memory at the largest of the samples taken
    every half second: how much of the peak is its own heap and how much mapped files."""
    with temp_dir("worker") as tmp:
        env = api_env(Path(tmp) / "data", free_port(), database_url, CRAWLDEX_METRICS_PORT="0")
        settings = Settings(redis_url=REDIS_URL)
        connection = redis.Redis.from_url(REDIS_URL)
        queue = JobQueue(connection, settings)
        for did in sorted(corpus, key=int)[:pages]:
            queue.enqueue_index(PageDocument(url=doc_url(did), markdown=corpus[did]))
        worker = Process([str(BIN / "crawldex-index-worker")], env, Path(tmp) / "worker.log")
        peak = 0.0
        largest = Resident(0.0, 0.0)
        try:
            deadline = time.monotonic() + 600
            while connection.llen("rq:queue:indexing") > 0 or _started(connection):
                if worker.popen.poll() is not None:
                    raise RuntimeError(f"index-worker exited:\n{worker.output()}")
                if time.monotonic() > deadline:
                    raise RuntimeError("index-worker did not finish its jobs in 600 s")
                peak = max(peak, vm_hwm_mb(worker.pid))
                largest = max(largest, resident_mb(worker.pid), key=lambda resident: resident.total)
                time.sleep(0.5)
            peak = max(peak, vm_hwm_mb(worker.pid))
        finally:
            worker.stop()
            connection.close()
    return peak, largest


def _started(connection: redis.Redis) -> bool:
    return bool(connection.zcard("rq:wip:indexing"))
