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
    bench_settings,
    flush_redis,
    postgres_database,
    progress,
    temp_dir,
)
from crawldex.jobs import JobLoop, WorkerRuntime, install_runtime
from crawldex.models import PageDocument
from crawldex.services import Services
from crawldex.worker import CrawldexWorker, worker_name

NOOP_QUEUE = "bench-noop"


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


class _DatabaseContext:
    """postgres_database() driven from synchronous code on the job loop."""

    def __init__(self, loop: JobLoop) -> None:
        self._loop = loop
        self._cm = postgres_database()

    def __enter__(self) -> str:
        return self._loop.run(self._cm.__aenter__())

    def __exit__(self, *exc: object) -> None:
        self._loop.run(self._cm.__aexit__(None, None, None))


def run(quick: bool = False) -> Report:
    report = Report("jobs")
    jobs = 150 if quick else 400
    flush_redis()
    connection = redis.Redis.from_url(REDIS_URL)
    progress(f"jobs: {jobs} no-op jobs through SimpleWorker")
    noop_rates = [_noop_rate(connection, jobs)]
    loop = JobLoop()
    with temp_dir("jobs") as tmp, _DatabaseContext(loop) as database_url:
        settings = bench_settings(Path(tmp), database_url)
        services = loop.run(Services.start(settings, embedder=NullEmbedder()))
        runtime = WorkerRuntime(loop, index=services)
        install_runtime(runtime)
        try:
            for i in range(jobs):
                services.queue.enqueue_index(
                    PageDocument(
                        url=f"https://jobs.bench/page/{i}",
                        markdown=f"# Page {i}\n\nA short page number {i} about queues and workers.",
                    )
                )
            progress(f"jobs: {jobs} index jobs (null embedder) through crawldex's worker")
            queue = Queue("indexing", connection=connection, serializer=JSONSerializer)
            worker = CrawldexWorker([queue], connection=connection, name=worker_name("bench"))
            started = time.perf_counter()
            worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
            seconds = time.perf_counter() - started
            finished = queue.finished_job_registry.count
            failed = queue.failed_job_registry.count
            points = loop.run(services.store.count())
        finally:
            install_runtime(None)
            loop.run(services.aclose())
    loop.close()
    progress("jobs: no-op jobs again")
    flush_redis()
    noop_rates.append(_noop_rate(connection, jobs))
    connection.close()
    if finished != jobs:
        raise RuntimeError(f"index jobs: {finished} finished, {failed} failed of {jobs}")
    rate = jobs / seconds
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
        f"(an RQ SimpleWorker) in burst mode in this process, {points} points written; the no-op rate is the "
        f"mean of runs before and after ({', '.join(f'{r:.0f}' for r in noop_rates)} jobs/s), same Redis, "
        "JSONSerializer, SimpleWorker."
    )
    return report
