"""Benchmark 2: per-job overhead: index jobs with a null embedder through real RQ (crawldex's SimpleWorker,
in-process burst, PostgreSQL, embedded Qdrant, Redis lock) against RQ's own no-op job rate on the same Redis."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from benchmarks.common import (
    REDIS_URL,
    NullEmbedder,
    Report,
    Row,
    flush_redis,
    progress,
    temp_dir,
    worker_runtime,
)
from crawldex.adapters.queue import JobQueue
from crawldex.config import QUEUE_INDEXING, Settings
from crawldex.models import PageDocument
from crawldex.worker import CrawldexWorker, worker_name

NOOP_QUEUE = "bench-noop"
CRAWL_ID = "crawl-jobs-bench"


def noop() -> None:
    """RQ's floor: a job that does nothing."""
    return


CHUNK_JOBS = 80  # jobs a side runs before the other side runs as many
CHUNKS = 10  # timed chunks a side (after one, untimed, that warms each worker up)


def _enqueue_pages(queue: JobQueue, first: int, count: int) -> None:
    for i in range(first, first + count):
        queue.enqueue_index(
            PageDocument(
                url=f"https://jobs.bench/page/{i}",
                markdown=f"# Page {i}\n\nA short page number {i} about queues and workers.",
                crawl_id=CRAWL_ID,  # as Firecrawl's pages come: each job records its page's end
            )
        )


def _side_by_side(chunks: int, batch_pages: int) -> tuple[float, float, int]:
    """Index jobs a second through crawldex's worker (taking up to ``batch_pages`` jobs at a time) and
    no-op jobs a second through RQ's SimpleWorker, the two taking turns by chunks of ``CHUNK_JOBS`` jobs in
    one process, so both meet the same machine; and the points written. Each worker's first chunk (its
    connections, caches, compiled statements) is not timed: this is a long-running worker's rate."""
    flush_redis()
    connection = redis.Redis.from_url(REDIS_URL)
    with (
        temp_dir("jobs") as tmp,
        worker_runtime(Path(tmp), NullEmbedder(), index_batch_pages=batch_pages) as (runtime, _),
    ):
        noop_queue = Queue(NOOP_QUEUE, connection=connection, serializer=JSONSerializer)
        noop_worker = SimpleWorker([noop_queue], connection=connection, serializer=JSONSerializer)
        index_queue = Queue(QUEUE_INDEXING, connection=connection, serializer=JSONSerializer)
        index_worker = CrawldexWorker(
            [index_queue], connection=connection, name=worker_name("bench"), index_batch_pages=batch_pages
        )
        seconds = {"noop": 0.0, "index": 0.0}
        for chunk in range(chunks + 1):
            # Each side first in every other chunk: the machine's speed drifts over seconds.
            for side in ("noop", "index") if chunk % 2 == 0 else ("index", "noop"):
                if side == "noop":
                    for _ in range(CHUNK_JOBS):
                        noop_queue.enqueue(noop, result_ttl=3600)
                else:
                    _enqueue_pages(runtime.index.queue, chunk * CHUNK_JOBS, CHUNK_JOBS)
                worker = noop_worker if side == "noop" else index_worker
                started = time.perf_counter()
                worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
                if chunk:
                    seconds[side] += time.perf_counter() - started
        expected = (chunks + 1) * CHUNK_JOBS
        for name, queue in (("no-op", noop_queue), ("index", index_queue)):
            if queue.finished_job_registry.count != expected:
                failed = queue.failed_job_registry.count
                raise RuntimeError(
                    f"{name} jobs: {queue.finished_job_registry.count} finished, {failed} failed"
                )
        points = runtime.run(runtime.index.store.count())
    connection.close()
    timed = chunks * CHUNK_JOBS
    return timed / seconds["index"], timed / seconds["noop"], points


def run(quick: bool = False) -> Report:
    report = Report("jobs")
    chunks = 3 if quick else CHUNKS
    batch_pages = Settings().index_batch_pages
    progress(
        f"jobs: {chunks} x {CHUNK_JOBS} index jobs (null embedder, {batch_pages} at a time) and as many "
        "no-op jobs, taking turns"
    )
    rate, noop_rate, points = _side_by_side(chunks, batch_pages)
    progress("jobs: the same, index jobs one at a time")
    one_at_a_time, noop_then, _ = _side_by_side(max(2, chunks // 3), 1)
    per_job_ms = 1000 / rate
    noop_ms = 1000 / noop_rate
    report.rows.append(
        Row(
            "2 per-job overhead",
            "index jobs/s, null embedder (ms/job)",
            f"{rate:.1f} ({per_job_ms:.1f} ms)",
            baseline=f"RQ no-op {noop_rate:.0f}/s ({noop_ms:.1f} ms)",
            ratio=f"{rate / noop_rate:.1%}",
            target="≤ 5 ms/job, ≥ 90 % of no-op",
            passed=per_job_ms <= 5 and rate / noop_rate >= 0.9,
        )
    )
    report.notes.append(
        f"Per-job overhead: one-chunk pages queued with JobQueue.enqueue_index, run by CrawldexWorker (an RQ "
        f"SimpleWorker taking up to {batch_pages} queued index jobs at a time) in burst mode, against RQ's "
        "SimpleWorker running no-op jobs (same Redis, JSONSerializer). The two workers live in one process "
        f"and take turns by chunks of {CHUNK_JOBS} jobs ({chunks} timed chunks each, each side first in every "
        "other chunk, after one untimed chunk each: a long-running worker's rate, not its start), so both "
        f"meet the same machine; {points} points written. One job at a time, as before batches, in the same "
        f"run: {one_at_a_time:.1f} jobs/s, {1000 / one_at_a_time:.1f} ms a job ({one_at_a_time / noop_then:.1%} "
        "of the no-op rate beside it)."
    )
    return report
