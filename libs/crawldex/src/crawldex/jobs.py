"""Job functions that RQ runs, by import path (``crawldex.jobs.index_page``).

The worker builds its services once (`install_runtime`) and every job reuses them. A job that fails
raises, so RQ records the failure, retries it and finally keeps it in the failed registry.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode
from rq import get_current_job

from crawldex.config import QUEUE_INDEXING
from crawldex.logs import log_context
from crawldex.models import PageDocument
from crawldex.operations import OperationRecord
from crawldex.services import Services
from crawldex.telemetry.metrics import JOB_DURATION, JOBS_FAILED, JOBS_FINISHED, JOBS_RETRIED, JOBS_STARTED
from crawldex.telemetry.tracing import TRACE_META_KEY, extracted_context, tracer

T = TypeVar("T")

_local = threading.local()


class JobLoop:
    """A persistent event loop that runs one job's coroutine at a time, and leaves nothing behind.

    If a job times out (our deadline, or RQ's death penalty raised into the loop) or fails, no task
    of it may survive: a leftover task would resume during the next job and could write an old
    version of a page over a newer one.
    """

    # Our own deadline fires this long before RQ's job timeout, so a slow job is cancelled cleanly
    # inside the loop rather than interrupted by RQ's death penalty in the middle of a write.
    TIMEOUT_MARGIN_SECONDS = 10.0

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        limit = None if timeout is None else max(1.0, timeout - self.TIMEOUT_MARGIN_SECONDS)
        try:
            # The job's log and trace context (contextvars) must reach the coroutine.
            return self._runner.run(asyncio.wait_for(coroutine, limit), context=contextvars.copy_context())
        except BaseException:
            self._cancel_leftovers()
            raise

    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks(self._runner.get_loop()) if not task.done()]

    def _cancel_leftovers(self) -> None:
        pending = self.pending_tasks()
        for task in pending:
            task.cancel()
        if pending:
            self._runner.get_loop().run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def close(self) -> None:
        self._runner.close()


class WorkerRuntime:
    """The services of one worker thread, bound to that thread's job loop."""

    def __init__(self, loop: JobLoop, services: Services) -> None:
        self.loop = loop
        self.services = services

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        return self.loop.run(coroutine, timeout=timeout)

    def close(self) -> None:
        self.loop.run(self.services.aclose())
        self.loop.close()


def install_runtime(runtime: WorkerRuntime | None) -> None:
    """Make ``runtime`` the one the jobs of the calling thread use."""
    _local.runtime = runtime


def current_runtime() -> WorkerRuntime:
    runtime: WorkerRuntime | None = getattr(_local, "runtime", None)
    if runtime is None:
        raise RuntimeError("no crawldex worker runtime in this thread: start jobs through a crawldex worker")
    return runtime


def index_page(page: dict[str, Any]) -> dict[str, Any]:
    runtime = current_runtime()
    settings = runtime.services.settings
    document = PageDocument.model_validate(page)
    with _instrumented_job(
        QUEUE_INDEXING, settings.index_job_retries, runtime, document.url, document.crawl_id
    ):
        outcome = runtime.run(
            runtime.services.pipeline.index(document), timeout=settings.index_job_timeout_seconds
        )
    return outcome.as_job_result()


@contextmanager
def _instrumented_job(
    queue: str, max_retries: int, runtime: WorkerRuntime, url: str | None, crawl_id: str | None
) -> Iterator[None]:
    """Metrics, the job's span (continuing the trace that queued it), log context, operation record."""
    job = get_current_job()
    job_id = job.id if job is not None else None
    carrier = job.meta.get(TRACE_META_KEY) if job is not None else None
    is_retry = job is not None and job.retries_left is not None and job.retries_left < max_retries
    JOBS_STARTED.labels(queue).inc()
    if is_retry:
        JOBS_RETRIED.labels(queue).inc()
    started = time.perf_counter()
    error: str | None = None
    with (
        extracted_context(carrier if isinstance(carrier, dict) else None),
        tracer().start_as_current_span(
            f"job {queue}",
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rq",
                "messaging.destination.name": queue,
                "crawldex.job_id": job_id or "",
            },
        ) as span,
        log_context(job_id=job_id, url=url, crawl_id=crawl_id),
    ):
        try:
            yield
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, error))
            JOBS_FAILED.labels(queue).inc()
            raise
        else:
            JOBS_FINISHED.labels(queue).inc()
        finally:
            seconds = time.perf_counter() - started
            JOB_DURATION.labels(queue, "failed" if error else "finished").observe(seconds)
            runtime.services.operations.record(
                OperationRecord(
                    operation_type="job",
                    operation_name=queue,
                    duration_ms=seconds * 1000,
                    success=error is None,
                    error=error,
                    document_url=url,
                    job_id=job_id,
                    crawl_id=crawl_id,
                )
            )
