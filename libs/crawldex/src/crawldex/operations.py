"""Operation metrics: every timed stage and job, kept in the `operation_metrics` table for the API.

Rows are written by a background thread with its own event loop and database engine, in batches,
so recording costs a job one queue put. If the database is slow or down, rows queue up to a bound
and the excess is dropped and counted (`crawldex_operation_metrics_dropped_total`): a metrics table
must never stall or fail indexing.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from prometheus_client import Counter
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from crawldex.db.database import create_engine
from crawldex.db.tables import OperationMetric
from crawldex.models import utc_now

log = logging.getLogger(__name__)
DROPPED = Counter(
    "crawldex_operation_metrics_dropped", "Operation-metric rows dropped (queue full or write failed)."
)


@dataclass(frozen=True)
class OperationRecord:
    operation_type: str  # "stage" or "job"
    operation_name: str  # the stage (clean, chunk, embed, ...) or the queue
    duration_ms: float
    success: bool
    error: str | None = None
    document_url: str | None = None
    job_id: str | None = None
    crawl_id: str | None = None
    timestamp: datetime = field(default_factory=utc_now)


class OperationSink(Protocol):
    def record(self, record: OperationRecord) -> None: ...


class DiscardOperations:
    """For processes that keep no operation metrics (CRAWLDEX_OPERATION_METRICS_ENABLED=false)."""

    def record(self, record: OperationRecord) -> None:
        return None

    def close(self) -> None:
        return None


class OperationWriter:
    """Batches records into the database from a thread of its own; deletes rows past retention hourly."""

    def __init__(
        self,
        database_url: str,
        *,
        retention_days: int,
        batch_size: int = 500,
        flush_seconds: float = 1.0,
        max_queued: int = 50_000,
    ) -> None:
        self._url = database_url
        self._retention = timedelta(days=retention_days)
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._queue: queue.Queue[OperationRecord] = queue.Queue(maxsize=max_queued)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operation-metrics", daemon=True)
        self._thread.start()

    def record(self, record: OperationRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            DROPPED.inc()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every record queued so far is written (tests, shutdown)."""
        self._wake.set()
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        runner = asyncio.Runner()
        engine = create_engine(self._url, pool_size=1)
        next_cleanup = 0.0
        full = False
        try:
            while not (self._stop.is_set() and self._queue.empty()):
                if not full and not self._stop.is_set():
                    self._sleep()
                batch = self._take_batch()
                full = len(batch) == self._batch_size
                if batch:
                    try:
                        runner.run(self._write(engine, batch))
                    except Exception:
                        DROPPED.inc(len(batch))
                        log.warning("could not write %d operation-metric rows", len(batch), exc_info=True)
                    finally:
                        for _ in batch:
                            self._queue.task_done()
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + 3600
                    try:
                        runner.run(self._cleanup(engine))
                    except Exception:
                        log.warning("operation-metrics retention cleanup failed", exc_info=True)
        finally:
            runner.run(engine.dispose())
            runner.close()

    def _sleep(self) -> None:
        """One flush interval, or less when flush() or close() asks.

        The writer sleeps instead of blocking on the queue: a thread blocked on the queue is woken by every
        record (eight per index job), each a hand-over of the GIL that the job pays for; sleeping, it wakes
        once an interval, and one INSERT takes what queued meanwhile.
        """
        self._wake.wait(self._flush_seconds)
        self._wake.clear()

    def _take_batch(self) -> list[OperationRecord]:
        batch: list[OperationRecord] = []
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    @staticmethod
    async def _write(engine: AsyncEngine, batch: list[OperationRecord]) -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(OperationMetric), [asdict(r) for r in batch])

    async def _cleanup(self, engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                delete(OperationMetric).where(OperationMetric.timestamp < utc_now() - self._retention)
            )
