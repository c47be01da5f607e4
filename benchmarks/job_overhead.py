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
    work_index_queue,
    worker_runtime,
)
from crawldex.config import Settings
from crawldex.models import PageDocument

NOOP_QUEUE = "bench-noop"
CRAWL_ID = "crawl-jobs-bench"


def noop() -> None:
    """RQ's floor: a job that does nothing."""
    return


def _noop_rate(connection: redis.Redis, jobs: int) -> float:
    queue = Queue(NOOP_QUEUE, connection=connection, serializer=JSONSerializer)
    for _ in range(jobs):
        queue.enqueue(noop, result_ttl=3600)
    worker = SimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    seconds = time.perf_counter() - started
    finished = queue.finished_job_registry.count
    if finished != jobs:
        raise RuntimeError(f"no-op: {finished} of {jobs} jobs finished")
    return jobs / seconds


def _index_rate(jobs: int, batch_pages: int) -> tuple[float, int]:
    """Index jobs a second through crawldex's worker taking up to ``batch_pages`` jobs at a time, and the
    points written."""
    flush_redis()
    with (
        temp_dir("jobs") as tmp,
        worker_runtime(Path(tmp), NullEmbedder(), index_batch_pages=batch_pages) as (runtime, settings),
    ):
        services = runtime.index
        for i in range(jobs):
            services.queue.enqueue_index(
                PageDocument(
                    url=f"https://jobs.bench/page/{i}",
                    markdown=f"# Page {i}\n\nA short page number {i} about queues and workers.",
                    crawl_id=CRAWL_ID,  # as Firecrawl's pages come: each job records its page's end
                )
            )
        progress(
            f"jobs: {jobs} index jobs (null embedder) through crawldex's worker, {batch_pages} at a time"
        )
        seconds = work_index_queue(settings)
        return jobs / seconds, runtime.run(services.store.count())


def run(quick: bool = False) -> Report:
    report = Report("jobs")
    jobs = 150 if quick else 400
    flush_redis()
    connection = redis.Redis.from_url(REDIS_URL)
    progress(f"jobs: {jobs} no-op jobs through SimpleWorker")
    noop_rates = [_noop_rate(connection, jobs)]
    batch_pages = Settings().index_batch_pages
    rate, points = _index_rate(jobs, batch_pages)
    one_at_a_time, _ = _index_rate(jobs, 1)
    progress("jobs: no-op jobs again")
    flush_redis()
    noop_rates.append(_noop_rate(connection, jobs))
    connection.close()
    noop_rate = sum(noop_rates) / len(noop_rates)
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
        f"Per-job overhead: {jobs} one-chunk pages queued with JobQueue.enqueue_index, run by CrawldexWorker "
        f"(an RQ SimpleWorker taking up to {batch_pages} queued index jobs at a time) in burst mode in this "
        f"process, {points} points written (one job at a time, as before batches: {one_at_a_time:.1f} jobs/s, "
        f"{1000 / one_at_a_time:.1f} ms a job, in the same run); the no-op rate is the "
        f"mean of runs before and after ({', '.join(f'{r:.0f}' for r in noop_rates)} jobs/s), same Redis, "
        "JSONSerializer, SimpleWorker."
    )
    return report
