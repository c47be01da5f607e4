"""RQ workers for crawldex queues: the worker process of a deployment, and the embedded-mode consumer.

Both run jobs in the worker's own process (RQ's `SimpleWorker`), so the services built at start-up,
the model above all, serve every job; a forking worker would lose anything a job builds.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from itertools import takewhile
from types import FrameType
from typing import Any

import redis
from prometheus_client import start_http_server
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus, _job_stack
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.utils import get_version, now
from rq.worker import WorkerStatus

from crawldex.adapters.queue import INDEX_JOB, INDEX_JOB_ID_PREFIX, connect_redis
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings
from crawldex.errors import ConfigurationError
from crawldex.heap import freeze_startup_objects
from crawldex.jobs import (
    JobLoop,
    WorkerRuntime,
    forget_batch,
    holds_share_of_batch,
    index_together,
    install_runtime,
)
from crawldex.logs import configure_logging
from crawldex.recovery import recover_change_events
from crawldex.services import RescrapeServices, Services
from crawldex.telemetry.metrics import initialize_label_sets
from crawldex.telemetry.tracing import configure_tracing

log = logging.getLogger(__name__)

# Moves up to ARGV[1] job ids from the head of queue KEYS[1] to its intermediate list KEYS[2] (as RQ's dequeue
# moves one), stopping after the first id without the index jobs' prefix ARGV[2]; nothing while any queue
# KEYS[3..] (served first by the worker) holds a job. Returns the ids moved.
_TAKE_INDEX_JOBS = """
for i = 3, #KEYS do
  if redis.call('LLEN', KEYS[i]) > 0 then return {} end
end
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then break end
  taken[#taken + 1] = id
  if string.sub(id, 1, #ARGV[2]) ~= ARGV[2] then break end
end
return taken
"""


class BatchStartedJob(Job):
    """A job as `CrawldexWorker` runs it: its key made persistent with the rest of its batch's start
    (`CrawldexWorker._prepare_executions`), not by a round trip of its own when it is performed.

    RQ's `Job.perform` sends PERSIST for the job's key before it runs the function, one round trip a job
    that was about 5 % of a batched index job's time (benchmark 2); this runs the function as RQ does
    (the job on RQ's stack of current jobs, which `rq.get_current_job` reads) without it.

    An index job that succeeds is recorded without its page's markdown (`_handle_success`): RQ keeps a
    finished job's hash for its result TTL (a day by default) for its status, and with the page in it
    Redis held a day of crawled pages, about half their size each.
    """

    key_persisted = False  # set once the batch's start, PERSIST included, is written

    def perform(self) -> Any:
        if not self.key_persisted:
            return super().perform()
        _job_stack.push(self)  # type: ignore[no-untyped-call]
        try:
            self._result = self._execute()
        finally:
            popped = _job_stack.pop()  # type: ignore[no-untyped-call]
            if popped is not self:  # pragma: no cover - RQ's own invariant
                raise RuntimeError(f"RQ's stack of current jobs lost job {self.id}")
        return self._result

    def _handle_success(
        self,
        result_ttl: Any,
        pipeline: redis.client.Pipeline,
        worker_name: str = "",
        execution_id: str | None = None,
        execution_started_at: datetime | None = None,
        execution_ended_at: datetime | None = None,
    ) -> Any:
        # RQ saves the whole job (its data compressed again) as it marks it finished; an index job's page
        # is not needed once indexed, only on a retry or a requeue, which follow a failure. A job that
        # repeats (RQ queues it again as it is) keeps its page; crawldex queues none.
        record = partial(
            super()._handle_success,
            result_ttl,
            pipeline=pipeline,
            worker_name=worker_name,
            execution_id=execution_id,
            execution_started_at=execution_started_at,
            execution_ended_at=execution_ended_at,
        )
        if self.repeats_left or not _is_index_job(self):
            return record()
        data = self.data
        self.data = _without_markdown(self)
        try:
            return record()
        finally:
            # The pipeline holds what it will write; should it fail, RQ records the job failed (and retried)
            # from this object, which must still carry its page.
            self.data = data


def _without_markdown(job: Job) -> bytes:
    """An index job's serialized call with its page's markdown left out: its URL and metadata stay for
    whoever reads the finished job, and the job could not index an empty page if it ever ran again."""
    page, *rest = job.args
    kept = {field: value for field, value in page.items() if field != "markdown"}
    return job.serializer.dumps((job.func_name, None, (kept, *rest), job.kwargs))


def _is_index_job(job: Job) -> bool:
    """Whether ``job`` indexes a page; a job whose data cannot be read is not (RQ fails it when it runs)."""
    try:
        return job.func_name == INDEX_JOB
    except Exception:  # RQ's DeserializationError, or whatever the serializer raises
        return False


def _markdown_chars(job: Job) -> int:
    """The length of an index job's markdown; 0 for another job, or one whose data cannot be read."""
    try:
        markdown = job.args[0]["markdown"]
    except Exception:  # not an index job's arguments, or RQ's DeserializationError
        return 0
    return len(markdown) if isinstance(markdown, str) else 0


def _took(job: Job) -> timedelta | None:
    return job.ended_at - job.started_at if job.started_at and job.ended_at else None


def worker_name(kind: str, suffix: str = "") -> str:
    """Unique per process (and per thread in the embedded mode): host, pid, kind."""
    return f"{socket.gethostname()}.{os.getpid()}.{kind}{suffix}"


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_stop_with_parent_registered = False


def _stop_with_parent() -> None:
    """In a child just forked from a worker: get SIGTERM when the worker dies.

    RQ forks its scheduler from the worker. A worker killed outright (SIGKILL, the OOM killer picking the
    worker alone) stops nothing, and the orphaned scheduler would keep the scheduler lock (no live worker
    could schedule retries) and, in the embedded mode, the vector store's file lock (no new worker could open
    the store). With SIGTERM the scheduler stops as on a shutdown: it releases its locks and exits.
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the worker died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def stop_forked_children_with_their_worker() -> None:
    """Once per process, on Linux: every process this one forks stops when its forking thread dies."""
    global _stop_with_parent_registered
    if sys.platform == "linux" and not _stop_with_parent_registered:
        os.register_at_fork(after_in_child=_stop_with_parent)
        _stop_with_parent_registered = True


class CrawldexWorker(SimpleWorker):
    """Runs jobs in its own process; our jobs are JSON, never pickles.

    RQ's `SimpleWorker` sends no heartbeat while a job runs, so it leases each job for the whole job timeout
    plus a minute: the job of a worker killed mid-job (SIGKILL, OOM, a lost node) would wait that long, and
    then up to RQ's 10-minute maintenance pass, before anyone re-ran it. This worker renews a short lease
    from a heartbeat thread while the job runs, and runs the maintenance pass (which re-queues abandoned jobs
    that have tries left) every ``maintenance_seconds``, so a dead worker's job runs again within
    3 x ``heartbeat_seconds`` + ``maintenance_seconds``.

    After an index job it takes the index jobs queued behind it, up to ``index_batch_pages`` in all, and
    indexes their pages as one batch (`crawldex.jobs.index_together`) before RQ performs each job as usual;
    each taken job is started (in RQ's started registry, leased, its status ``started``) from the moment it
    is taken, and the jobs of a batch that succeed are recorded as finished together once all have run
    (`_record_successes`).
    """

    LEASE_BEATS = 3  # beats a job's lease survives: one late beat is not a dead worker

    def __init__(
        self,
        *args: Any,
        heartbeat_seconds: int = 10,
        maintenance_seconds: int = 30,
        extra_maintenance: Callable[[], None] | None = None,
        index_batch_pages: int = 1,
        index_batch_max_chars: int = 1_000_000,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("job_class", BatchStartedJob)
        kwargs.setdefault("job_monitoring_interval", heartbeat_seconds)
        kwargs.setdefault("maintenance_interval", maintenance_seconds)
        # An idle worker blocks on the queue for worker_ttl - 15 s; it must wake for maintenance in time.
        kwargs.setdefault("worker_ttl", maintenance_seconds + 15)
        super().__init__(*args, **kwargs)
        stop_forked_children_with_their_worker()
        self.heartbeat_seconds = heartbeat_seconds
        self._extra_maintenance = extra_maintenance
        self.index_batch_pages = index_batch_pages
        self.index_batch_max_chars = index_batch_max_chars
        self._heartbeat: JobHeartbeat | None = None
        self._executions: dict[str, Execution] = {}
        # While a batch runs: the jobs that succeeded, recorded as finished when it ends.
        self._successes: list[tuple[Job, Queue, Execution]] | None = None
        # RQ clears the worker's current job with any job's execution record (a failure, a retry, a success
        # RQ records itself): the batch's next job performed then names itself again.
        self._current_job_cleared = False
        self._force_stopped = False
        self._take_index_jobs = self.connection.register_script(_TAKE_INDEX_JOBS)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        if self._extra_maintenance is not None:
            try:
                self._extra_maintenance()
            except Exception:
                # Maintenance is retried next pass; it must never stop the worker.
                log.exception("maintenance task failed")

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.heartbeat_seconds * self.LEASE_BEATS

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Busy from here on (RQ writes the state to Redis with the batch's start): a warm stop asked while
        # jobs are taken for the batch then waits for the batch, as for a job, instead of raising
        # StopRequested with taken jobs left in RQ's intermediate list, each to lose a try.
        self._state = WorkerStatus.BUSY
        batch = [(job, queue), *self._more_index_jobs(job, queue)]
        self._executions = self._prepare_executions(batch)
        self._current_job_cleared = False
        if self._heartbeat is None:
            self._heartbeat = JobHeartbeat(self._beat, self.heartbeat_seconds, name=f"heartbeat-{self.name}")
        with self._heartbeat.running([queued for queued, _ in batch]):
            try:
                leading = list(takewhile(_is_index_job, (queued for queued, _ in batch)))
                if len(leading) > 1:
                    index_together(leading)
                self._successes = [] if len(batch) > 1 else None
                for position, (queued, origin) in enumerate(batch):
                    if self._stop_requested and len(batch) > 1 and not holds_share_of_batch(queued.id):
                        # Asked to stop: what is left needs indexing of its own (the batch failed on a
                        # page, or a job of another kind ended it), which the grace period was not sized
                        # for. It goes back to its queue for another worker, no try spent.
                        self._return_to_queues(batch[position:])
                        break
                    self.execution = self._executions[queued.id]
                    self.perform_job(queued, origin)
                    if self._force_stopped:
                        raise SystemExit("cold shutdown")  # RQ's perform_job caught the first one
            finally:
                forget_batch()
                self._record_successes()
        self._executions = {}  # only now: no beat follows the end of `running`
        self.set_state(WorkerStatus.IDLE)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        self._force_stopped = True
        super().request_force_stop(signum, frame)

    def _return_to_queues(self, jobs: Sequence[tuple[Job, Queue]]) -> None:
        """Jobs of a batch not performed: queued again at the front of their queues, in their order, their
        executions and leases gone, as if they had never been taken: a job enqueued with a ttl expires again
        after it, as RQ's enqueue left it (the batch's start made every key persistent)."""
        for queued, _ in jobs:
            if self._heartbeat is not None:
                self._heartbeat.release(queued)  # before the execution goes: no beat writes it again
        try:
            with self.connection.pipeline() as pipeline:
                for queued, origin in reversed(jobs):
                    self._executions[queued.id].delete(job=queued, pipeline=pipeline)
                    queued.set_status(JobStatus.QUEUED, pipeline=pipeline)
                    queued.cleanup(ttl=queued.ttl, pipeline=pipeline, remove_from_queue=False)
                    origin.push_job_id(queued.id, pipeline=pipeline, at_front=True)
                pipeline.execute()
        except redis.RedisError:
            # Their leases lapse; RQ's clean-up of abandoned jobs runs them again (a try each).
            log.exception("could not put %d jobs back on their queues", len(jobs))
            return
        log.info(
            "warm shutdown: %d jobs put back on their queues: %s", len(jobs), ", ".join(j.id for j, _ in jobs)
        )

    def _more_index_jobs(self, job: Job, queue: Queue) -> list[tuple[Job, Queue]]:
        """After an index job, the jobs queued behind it, up to ``index_batch_pages`` jobs in all, taken
        without waiting (none while the queue is empty, or while a queue this worker serves first has jobs).
        A job of another kind ends the batch: it runs after the batch, as it would have without one. (Only
        an index job's id has the prefix the taking stops at; should another job have it, the jobs taken
        after it run after it, one by one: `execute_job` batches only the index jobs before it.)

        Taken as RQ's dequeue takes a job (moved to the queue's intermediate list, then read), but all in
        two round trips (`_TAKE_INDEX_JOBS`, then one read of every job taken) instead of two a job.
        """
        count = self.index_batch_pages - 1
        if not _is_index_job(job) or count < 1:
            return []
        if get_version(self.connection) < (6, 2, 0):  # no LMOVE (RQ itself falls back likewise)
            taken = self._dequeue_index_jobs(count)
        else:
            taken = self._move_index_jobs(queue, count)
        # An id queued twice (RQ can re-queue a job still queued) runs once: a batch's records go by job id.
        seen = {job.id}
        unique: list[tuple[Job, Queue]] = []
        for more, origin in taken:
            if more.id not in seen:
                seen.add(more.id)
                unique.append((more, origin))
        return self._within_size(job, unique)

    def _within_size(self, job: Job, taken: list[tuple[Job, Queue]]) -> list[tuple[Job, Queue]]:
        """The jobs taken that keep the batch's markdown within ``index_batch_max_chars``; the others go
        back to the front of their queue, in their order, still queued (they were only taken): a batch's
        chunks, vectors and payloads are held at once, and a few very large pages together could exhaust
        the worker's memory, taking the small pages batched with them down too."""
        budget = self.index_batch_max_chars - _markdown_chars(job)
        for position, (more, _) in enumerate(taken):
            budget -= _markdown_chars(more)
            if budget < 0:
                self._put_back(taken[position:])
                return taken[:position]
        return taken

    def _put_back(self, jobs: Sequence[tuple[Job, Queue]]) -> None:
        try:
            with self.connection.pipeline() as pipeline:
                for more, origin in reversed(jobs):
                    pipeline.lrem(origin.intermediate_queue_key, 0, more.id)
                    origin.push_job_id(more.id, pipeline=pipeline, at_front=True)
                pipeline.execute()
        except redis.RedisError:
            # Left in the intermediate list, RQ's clean-up of it re-queues them.
            log.exception("could not put back %d jobs taken beyond a batch's size", len(jobs))

    def _move_index_jobs(self, queue: Queue, count: int) -> list[tuple[Job, Queue]]:
        """`_more_index_jobs` in two round trips: `_TAKE_INDEX_JOBS`, then one read of the jobs taken."""
        served = [served.key for served in self._ordered_queues]
        ahead = served[: served.index(queue.key)] if queue.key in served else served
        try:
            moved = self._take_index_jobs(
                keys=[queue.key, queue.intermediate_queue_key, *ahead], args=[count, INDEX_JOB_ID_PREFIX]
            )
        except redis.RedisError:
            log.exception("could not take more jobs for a batch")
            return []
        return [(more, queue) for more in self._read_jobs([raw.decode() for raw in moved])]

    def _dequeue_index_jobs(self, count: int) -> list[tuple[Job, Queue]]:
        """`_more_index_jobs` through RQ's own dequeue, a job at a time."""
        taken: list[tuple[Job, Queue]] = []
        while len(taken) < count:
            try:
                more = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    None,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except Exception:
                # A job that cannot be read is left in RQ's intermediate queue, as when RQ's own
                # dequeue meets one, for RQ's clean-up of it; the batch goes on with the jobs taken.
                log.exception("could not take more jobs for a batch")
                break
            if more is None:
                break
            taken.append(more)
            if not _is_index_job(more[0]):
                break
        return taken

    def _read_jobs(self, ids: Sequence[str]) -> list[Job]:
        """The jobs of ``ids``, read in one round trip. As RQ's dequeue does, a job that no longer exists is
        passed over, and one that cannot be read is left in the intermediate queue for RQ's clean-up."""
        try:
            found = self.job_class.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        except Exception:
            found = []
            for job_id in ids:  # one at a time, to pass over only the one that cannot be read
                try:
                    found.append(
                        self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
                    )
                except Exception:
                    log.exception("could not read job %s taken for a batch", job_id)
        return [job for job in found if job is not None]

    def _prepare_executions(self, batch: Sequence[tuple[Job, Queue]]) -> dict[str, Execution]:
        """RQ's `prepare_execution` and `prepare_job_execution` for a batch's jobs in one round trip (a
        transaction): each job's execution record, in its started registry and leased, the job started and
        its key made persistent (`BatchStartedJob`); the worker busy, on the batch's first job; and each job
        off its queue's intermediate list at once.

        RQ takes a job off that list only later (`prepare_job_execution`), and only when the worker serves
        one queue (with several, its dequeue never puts it there); a job taken for a batch is put there
        whatever the queues. Left there while the job is also in the started registry, RQ's two clean-ups
        could each re-queue it (a dead worker's job run twice), or, once it has ended, fail and retry it."""
        with self.connection.pipeline() as pipeline:
            executions = {}
            for job, queue in batch:
                ttl = self.get_heartbeat_ttl(job)
                executions[job.id] = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
                job.prepare_for_execution(self.name, pipeline=pipeline)
                pipeline.persist(job.key)  # what RQ's `Job.perform` does, one round trip a job
                pipeline.lrem(queue.intermediate_queue_key, 0, job.id)
            first = batch[0][0]
            self.set_current_job_id(first.id, pipeline=pipeline)
            self.set_current_job_working_time(0, pipeline=pipeline)
            self.heartbeat(self.get_heartbeat_ttl(first), pipeline=pipeline)
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            pipeline.execute()
        for job, _ in batch:
            if isinstance(job, BatchStartedJob):
                job.key_persisted = True
        return executions

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if job.id not in self._executions:  # not taken through execute_job
            super().prepare_job_execution(job, remove_from_intermediate_queue)
            return
        # The batch's first job stays the worker's current job (`rq info`) until the batch ends: its jobs
        # all started together, and their pages were indexed before any of them is performed, so a write a
        # job (a round trip, 5 % of a batched job's time) would name each for well under a millisecond.
        # RQ's stop-job command, which reads it, stops nothing in a worker without a work horse.
        if self._current_job_cleared:
            self._current_job_cleared = False
            self.set_current_job_id(job.id)
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")  # type: ignore[no-untyped-call]

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ also writes the job's last heartbeat here, a round trip of its own, for the callback that
        # follows; without one, that time is written with the rest of the job's record when it ends.
        if job._success_callback_name or job._failure_callback_name:  # names: importing them may fail
            super().handle_execution_ended(job, queue, heartbeat_ttl)
            return
        job.ended_at = now()
        job.last_heartbeat = job.ended_at

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry) -> None:
        if self._successes is None or self.execution is None or job.webhooks or job.repeats_left:
            super().handle_job_success(job, queue, started_job_registry)
            return
        self._successes.append((job, queue, self.execution))  # recorded when the batch ends

    def _record_successes(self) -> None:
        """RQ's `handle_job_success` for the jobs of a batch that succeeded, all in one transaction (three
        round trips for the batch instead of three a job): each job finished, its result saved, its
        execution and lease gone, the worker's counts raised. Its heartbeat runs until then.

        Should any of them have dependent jobs (RQ queues the dependents), or the transaction fail, RQ records
        them one by one. A job that cannot be recorded even so stays started until its lease lapses; RQ's
        clean-up of abandoned jobs then runs it again while it has tries left (an index job whose page is
        indexed already changes nothing), else fails it.
        """
        succeeded, self._successes = self._successes, None
        if not succeeded:
            return
        dependents = [job.dependents_key for job, _, _ in succeeded]
        try:
            with self.connection.pipeline() as pipeline:
                while True:
                    try:
                        # As RQ does: a dependent added meanwhile makes the transaction start again.
                        pipeline.watch(*dependents)  # type: ignore[no-untyped-call]
                        if pipeline.sunion(dependents):
                            pipeline.reset()
                            break
                        pipeline.multi()
                        for job, _, execution in succeeded:
                            self._record_success(job, execution, pipeline)
                        pipeline.execute()
                    except redis.WatchError:
                        continue
                    for job, _, _ in succeeded:
                        log.info("Successfully completed job %s in %s", job.id, _took(job))
                    return
        except Exception:
            log.exception("could not record a batch's jobs as finished together; recording them one by one")
        for job, queue, execution in succeeded:
            self.execution = execution
            try:
                super().handle_job_success(job, queue, queue.started_job_registry)
            except Exception:  # the next job's record may still go through; the worker must go on
                log.exception("could not record job %s as finished", job.id)

    def _record_success(self, job: Job, execution: Execution, pipeline: redis.client.Pipeline) -> None:
        """What RQ's `handle_job_success` writes for a job without dependents, on ``pipeline``."""
        self.increment_successful_job_count(pipeline=pipeline)
        took = _took(job)
        if took is not None:
            self.increment_total_working_time(took, pipeline)
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl != 0:
            job._handle_success(
                result_ttl,
                pipeline=pipeline,
                worker_name=self.name,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=job.ended_at,
            )
        job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
        self.execution = execution
        self.cleanup_execution(job, pipeline=pipeline)

    def cleanup_execution(self, job: Job, pipeline: redis.client.Pipeline) -> None:
        # Before the execution's records go, so that no heartbeat can write them again.
        if self._heartbeat is not None:
            self._heartbeat.release(job)
        super().cleanup_execution(job, pipeline)
        self._current_job_cleared = True

    def _beat(self, jobs: Sequence[Job]) -> None:
        """Renew the worker's registration and the lease of each job it holds (RQ's `maintain_heartbeats`,
        for a batch of jobs)."""
        try:
            with self.connection.pipeline() as pipeline:
                self.heartbeat(self.job_monitoring_interval + 60, pipeline=pipeline)
                for job in jobs:
                    ttl = self.get_heartbeat_ttl(job)
                    self._executions[job.id].heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
                    job.heartbeat(now(), ttl, pipeline=pipeline, xx=True)
                pipeline.execute()
        except redis.RedisError as exc:
            # Redis is away: the leases may lapse and the jobs run again elsewhere; jobs are idempotent.
            log.warning("heartbeat of jobs %s failed: %s", ", ".join(job.id for job in jobs), exc)

    def teardown(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.close()
            self._heartbeat = None
        super().teardown()  # type: ignore[no-untyped-call]


class JobHeartbeat:
    """Calls ``beat(jobs)`` every ``interval`` seconds for the jobs a worker holds (one, or a batch), from
    one thread that serves every job of the worker.

    A thread per job would cost each job a thread start and a join, two hand-overs between threads that
    a short job feels. This thread is never woken for a job: it sleeps until the next beat is due (or one
    interval while idle), so starting and ending jobs only take a lock. A beat holds that lock, so a job
    released waits for a beat in flight and no beat ever follows the release of its job.
    """

    def __init__(self, beat: Callable[[Sequence[Job]], None], interval: float, *, name: str) -> None:
        self._beat = beat
        self._interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: list[Job] = []
        self._due = 0.0  # monotonic time of the next beat while jobs are held
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @contextmanager
    def running(self, jobs: Sequence[Job]) -> Iterator[None]:
        """Beat for ``jobs`` until each is released, or until the block ends."""
        with self._lock:
            self._jobs = list(jobs)
            self._due = time.monotonic() + self._interval
        try:
            yield
        finally:
            with self._lock:
                self._jobs = []

    def release(self, job: Job) -> None:
        """No more beats for ``job`` (it has ended)."""
        with self._lock:
            self._jobs = [held for held in self._jobs if held.id != job.id]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                if self._jobs and now >= self._due:
                    try:
                        self._beat(list(self._jobs))
                    except Exception:
                        # This thread serves every later job too: it must outlive any one beat's error.
                        log.exception("heartbeat of jobs %s failed", ", ".join(job.id for job in self._jobs))
                    # Counted from the beat's end, so the wait below always lets go of the lock, even
                    # when Redis answers slower than the interval: jobs can end meanwhile.
                    self._due = time.monotonic() + self._interval
                    continue
                # Idle, it looks again after one interval: a job that starts meanwhile is due no sooner.
                self._wake.wait(self._due - now if self._jobs else self._interval)


class EmbeddedWorker(CrawldexWorker):
    """A worker that lives in a thread of the ingest-api process (embedded mode only).

    Off the main thread Python forbids signal handlers, so this worker installs none (stopping is
    `stop()`, checked between one-second waits for a job), enforces job timeouts with a timer instead
    of SIGALRM, and moves due retries from the scheduled registry itself instead of forking RQ's
    scheduler process.
    """

    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_event = threading.Event()
        self._scheduler: RQScheduler | None = None

    def _install_signal_handlers(self) -> None:
        return None

    def stop(self) -> None:
        """Stop after the running job, if any (a warm shutdown)."""
        self._stop_event.set()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # Wait for a job one second at a time; between waits, honour stop() and move due retries.
        # Returning None ends RQ's work loop, which then unregisters the worker.
        while not self._stop_event.is_set():
            self._enqueue_due_retries()
            result = super().dequeue_job_and_maintain_ttl(timeout=1, max_idle_time=1)
            if result is not None:
                return result
        return None

    def _enqueue_due_retries(self) -> None:
        if self._scheduler is None:
            self._scheduler = RQScheduler(self.queues, connection=self.connection, serializer=self.serializer)
        if self._scheduler.acquired_locks:
            self._scheduler.heartbeat()  # type: ignore[no-untyped-call]  # extends the lock's TTL
        else:
            self._scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if self._scheduler.acquired_locks:
            self._scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]

    def teardown(self) -> None:
        if self._scheduler is not None and self._scheduler.acquired_locks:
            self._scheduler.release_locks()  # type: ignore[no-untyped-call]
        super().teardown()


def serve_metrics(settings: Settings) -> None:
    """A worker's /metrics on its own port (CRAWLDEX_METRICS_PORT; 0: none)."""
    initialize_label_sets()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)


WORKER_QUEUES = {"index-worker": QUEUE_INDEXING, "rescrape-worker": QUEUE_RESCRAPE}


def run_worker(settings: Settings, kind: str, *, burst: bool = False) -> None:
    """Run an index-worker or a rescrape-worker in this (main) thread until SIGTERM/SIGINT; the first
    signal lets the running job finish. Its services are built once, here, and serve every job."""
    serve_metrics(settings)
    queue_names = [WORKER_QUEUES[kind]]
    loop = JobLoop()
    if kind == "index-worker":
        runtime = WorkerRuntime(
            loop, index=loop.run(Services.start(settings, migrate=settings.migrate_on_start))
        )
    else:
        runtime = WorkerRuntime(loop, rescrape=loop.run(RescrapeServices.start(settings)))
    install_runtime(runtime)
    connection = connect_redis(settings.redis_url)
    queues = [Queue(name, connection=connection, serializer=JSONSerializer) for name in queue_names]
    worker = CrawldexWorker(
        queues,
        connection=connection,
        name=worker_name(kind),
        heartbeat_seconds=settings.worker_heartbeat_seconds,
        maintenance_seconds=settings.worker_maintenance_seconds,
        index_batch_pages=settings.index_batch_pages,
        index_batch_max_chars=settings.index_batch_max_chars,
        extra_maintenance=(
            partial(sweep_change_events, runtime, connection, settings) if kind == "rescrape-worker" else None
        ),
    )
    # An index-worker's start-up (torch, the model, the clients) leaves ~300,000 objects that the garbage
    # collector's full passes would walk for the worker's whole life, 70-90 ms each, in the middle of jobs.
    freeze_startup_objects()
    try:
        worker.work(burst=burst, with_scheduler=not burst, logging_level=settings.log_level)
    finally:
        install_runtime(None)
        runtime.close()


CHANGE_EVENT_SWEEP_LOCK = "crawldex:maintenance:change-events"


def sweep_change_events(runtime: WorkerRuntime, connection: redis.Redis, settings: Settings) -> None:
    """Settle change events whose job was lost (see `crawldex.recovery`); one worker per pass sweeps."""
    if not connection.set(
        CHANGE_EVENT_SWEEP_LOCK, worker_name("sweep"), nx=True, ex=settings.worker_maintenance_seconds
    ):
        return
    services = runtime.rescrape
    # An event is only looked at once its own job could have ended: past its timeout and all retry waits.
    untouched_for = timedelta(
        seconds=settings.rescrape_job_timeout_seconds + 2 * settings.worker_maintenance_seconds
    )
    runtime.run(recover_change_events(services.change_events, services.queue, untouched_for=untouched_for))


class EmbeddedConsumer:
    """Consumes queues in a background thread of the API process, sharing its model and store."""

    def __init__(self, settings: Settings, queue_names: Sequence[str], shared: Services) -> None:
        self._settings = settings
        self._queue_names = list(queue_names)
        self._shared = shared
        self._worker: EmbeddedWorker | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"consumer-{'+'.join(queue_names)}", daemon=True
        )

    def start(self, timeout: float = 120.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"embedded consumer did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"embedded consumer failed to start: {self._error}") from self._error

    def _run(self) -> None:
        loop = JobLoop()
        try:
            index = loop.run(Services.start(self._settings, share_from=self._shared, migrate=False))
            rescrape = loop.run(
                RescrapeServices.start(self._settings, migrate=False, operations=index.operations)
            )
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        runtime = WorkerRuntime(loop, index=index, rescrape=rescrape)
        install_runtime(runtime)
        connection = connect_redis(self._settings.redis_url)
        queues = [Queue(n, connection=connection, serializer=JSONSerializer) for n in self._queue_names]
        self._worker = EmbeddedWorker(
            queues,
            connection=connection,
            name=worker_name("embedded", f".{threading.get_ident()}"),
            heartbeat_seconds=self._settings.worker_heartbeat_seconds,
            maintenance_seconds=self._settings.worker_maintenance_seconds,
            index_batch_pages=self._settings.index_batch_pages,
            index_batch_max_chars=self._settings.index_batch_max_chars,
            extra_maintenance=partial(sweep_change_events, runtime, connection, self._settings),
        )
        self._ready.set()
        try:
            self._worker.work(logging_level=self._settings.log_level)
        except Exception:
            log.exception("embedded consumer stopped on an error")
        finally:
            install_runtime(None)
            runtime.close()

    def stop(self, timeout: float) -> bool:
        """Finish the running job, then stop (a warm shutdown); False if it was still running at ``timeout``."""
        if self._worker is not None:
            self._worker.stop()
        self._thread.join(timeout)
        return not self._thread.is_alive()


def main(kind: str, argv: list[str] | None = None) -> None:
    """The command line of a worker service (`crawldex-index-worker`, `crawldex-rescrape-worker`)."""
    parser = argparse.ArgumentParser(
        prog=f"crawldex-{kind}", description=f"RQ worker of the {WORKER_QUEUES[kind]} queue."
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing(settings, f"crawldex-{kind}")
    try:
        run_worker(settings, kind, burst=args.burst)
    except ConfigurationError as exc:
        log.error("%s", exc)
        sys.exit(2)
