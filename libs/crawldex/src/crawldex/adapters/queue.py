"""The job queue: RQ on Redis, with RQ's standard keys so `rq info` and rq-dashboard see everything.

Jobs carry JSON (never pickles): the API and the workers are separate images that may run different
versions for the length of a rollout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import redis
import redis.asyncio as aioredis
from isal import isal_zlib
from opentelemetry.trace import SpanKind
from pydantic_core import to_json
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now

from crawldex.adapters.rate_limit import GCRA_LUA_FUNCTION, RateCharge, RateLimitedError
from crawldex.adapters.redis_client import HeldScript, async_client
from crawldex.adapters.redis_memory import RedisMemoryGauge
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings
from crawldex.errors import DependencyUnavailableError
from crawldex.group_commit import GroupCommit
from crawldex.models import PageDocument, utc_now
from crawldex.telemetry.metrics import JOBS_DEDUPLICATED, JOBS_ENQUEUED, series
from crawldex.telemetry.tracing import (
    TRACE_META_KEY,
    inject_context,
    queue_span_attributes,
    tracer,
    tracing_enabled,
)
from crawldex.urls import canonicalize_url

INDEX_JOB = "crawldex.jobs.index_page"
# Every index job's id starts so, and no other job's: a worker batching index jobs reads it.
INDEX_JOB_ID_PREFIX = "index-"
REMOVE_JOB = "crawldex.jobs.remove_page"
RESCRAPE_JOB = "crawldex.jobs.rescrape_page"
RECONCILE_JOB = "crawldex.jobs.reconcile_crawl"
_PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
_PENDING_OR_DONE = {*_PENDING, JobStatus.FINISHED}


def _serialized(value: Any) -> bytes:
    """A job's data or meta as JSON that RQ's `JSONSerializer` reads back, written by pydantic-core in one
    call (the standard encoder with its options set up its encoder anew on every call: ~100 bytecodes),
    without spaces and with every character as itself in UTF-8 rather than escaped to ASCII: shorter for a
    page in any script but Latin, and a tenth of the cost of escaping on the webhook's path."""
    return to_json(value)


def _hash_text(value: object) -> str:
    """A job hash's value as redis-py would send it: a string (an enum of str by its value) or an integer's
    digits."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"a job hash value of type {type(value).__name__}")


# The fields of RQ's job hash (`Job.to_dict`) that differ from one job of a kind to the next.
_OWN_FIELDS = frozenset({"created_at", "enqueued_at", "data", "description", "meta", "retry_intervals"})
# A job's data is a zlib stream, as RQ writes it and its worker inflates it, made by ISA-L at its level 1:
# five times faster than zlib's default level on an 8 KiB page (zlib set up its 256 KiB of state for every job,
# 150 k instructions even for a one-line page), its output ~5 % larger (benchmarks/ANALYSIS.md).
JOB_DATA_COMPRESSION_LEVEL = 1
# Data shorter than this is stored as it is, as HTTP servers leave small bodies uncompressed: deflating a short
# page's few hundred bytes saves a few dozen, and building ISA-L's tables for it cost ~3 % of a webhook's CPU.
# RQ's worker reads data that is not a zlib stream as it is (`Job.restore`), and JSON cannot start like one.
JOB_DATA_COMPRESSED_FROM = 1024


def _job_data(serialized: bytes) -> bytes:
    """A job's serialized call as its hash's ``data``: compressed unless short (`JOB_DATA_COMPRESSED_FROM`)."""
    if len(serialized) < JOB_DATA_COMPRESSED_FROM:
        return serialized
    return isal_zlib.compress(serialized, JOB_DATA_COMPRESSION_LEVEL)


# What RQ's `Queue.enqueue(..., unique=True)` writes, for every job of one or more deliveries in one script run
# (RQ takes two round trips a job: a pipeline registering the queue, then its own Lua script): unless the job's
# hash exists, write it and push its id on the queue; register the queue in rq:queues. A delivery may carry a
# rate charge (a webhook's limit, counted with its jobs: one round trip for both); if it is refused, nothing of
# that delivery is written.
# KEYS: the queue, rq:queues, then for each delivery its jobs' hashes and its charge's bucket if any.
# ARGV: the number of deliveries, then for each its number of jobs, its charge's interval and capacity ("" for
# none), and for each job its id, the fields every job of its kind shares (one JSON array of names and values,
# the same string for each: decoded once a run) and the values of its own fields, named by the script: its
# creation and enqueue time (one value), data, description, meta and retry intervals ("" for none). Together
# they are RQ's own hash (`Job.to_dict`; tests/integration/test_queue_enqueue.py compares them with RQ's).
# Returns for each delivery the charge's answer ({1, 0, 0} without one; see `gcra`) and, unless refused, for
# each job 1 if it was queued and 0 if a job of that id exists.
_ENQUEUE_UNIQUE = (
    GCRA_LUA_FUNCTION
    + """
local answers = {}
local at, key = 2, 3
local queued = false
local shared = {}
for d = 1, tonumber(ARGV[1]) do
    local jobs = tonumber(ARGV[at])
    local charged = ARGV[at + 1] ~= ""
    local answer = {1, 0, 0}
    if charged then
        answer = gcra(KEYS[key + jobs], ARGV[at + 1], ARGV[at + 2])
    end
    at = at + 3
    for i = 1, jobs do
        if answer[1] == 1 then
            if redis.call("EXISTS", KEYS[key]) == 1 then
                answer[i + 3] = 0
            else
                local kind = ARGV[at + 1]
                shared[kind] = shared[kind] or cjson.decode(kind)
                local moment = ARGV[at + 2]
                redis.call("HSET", KEYS[key], "created_at", moment, "enqueued_at", moment, "data", ARGV[at + 3],
                    "description", ARGV[at + 4], "meta", ARGV[at + 5])
                if ARGV[at + 6] ~= "" then
                    redis.call("HSET", KEYS[key], "retry_intervals", ARGV[at + 6])
                end
                redis.call("HSET", KEYS[key], unpack(shared[kind]))
                redis.call("RPUSH", KEYS[1], ARGV[at])
                answer[i + 3] = 1
                queued = true
            end
        end
        key = key + 1
        at = at + 7
    end
    if charged then
        key = key + 1
    end
    answers[d] = answer
end
if queued then
    redis.call("SADD", KEYS[2], KEYS[1])
end
return answers
"""
)
# Replaces the data of job KEYS[1] (id ARGV[2]) with ARGV[1] if the job is still queued and still among the
# last ARGV[3] ids of its queue's list KEYS[2]; returns 1 if it did. A worker takes a job's id off the list
# before it reads the job and marks it started: a job marked queued but off the list may have been read
# already, and new data would be lost. The list is searched from its tail, where a job queued a moment ago
# is, and no further than `REFRESH_SEARCH_DEPTH` ids: Redis runs nothing else while a script runs, and a
# full search of a backlog of a million ids took 13-20 ms (0.2 ms to this depth). A job deeper is not
# joined: its page gets a job of its own (indexed twice, the same content). Before Redis 6.0.6 (no LPOS)
# the status alone decides; any other error of LPOS (an ACL that denies it) is the script's error, not a
# silent join.
_REFRESH_QUEUED = """
if redis.call("HGET", KEYS[1], "status") ~= "queued" then
    return 0
end
local at = redis.pcall("LPOS", KEYS[2], ARGV[2], "RANK", -1, "MAXLEN", ARGV[3])
if type(at) == "table" and at.err then
    if not string.find(string.lower(at.err), "unknown", 1, true) then
        return redis.error_reply(at.err)
    end
elseif at == false then
    return 0
end
redis.call("HSET", KEYS[1], "data", ARGV[1])
return 1
"""
REFRESH_SEARCH_DEPTH = 10_000
# Deliveries in one script run at most: Redis runs a script to its end before anything else.
_DELIVERIES_A_RUN = 32


def rq_time(moment: datetime) -> str:
    """A UTC time as RQ writes it in a job hash (`rq.utils.utcformat`), whose strftime was 1 % of a webhook's
    instructions."""
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True)
class _DeliveryPart:
    """One delivery's part of an `_ENQUEUE_UNIQUE` run: its keys and arguments after the shared ones."""

    keys: list[str]
    args: list[Any]


@dataclass(frozen=True)
class EnqueuedJob:
    job_id: str
    url: str
    deduplicated: bool  # an identical job was already waiting or running


@dataclass(frozen=True)
class JobView:
    job_id: str
    queue: str
    status: str
    enqueued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    result: Any
    error: str | None
    retries_left: int | None
    worker_name: str | None
    meta: dict[str, Any]


def _status_text(status: JobStatus | bytes | str | None) -> str | None:
    """A job's status as a plain string, as its hash stores it (JobStatus is a str enum)."""
    return status.decode() if isinstance(status, bytes) else status


def index_job_id(page: PageDocument, delivery_id: str | None) -> str:
    """The job of one delivery of one page.

    A delivery the sender identifies (Firecrawl's ``webhookId``, new for every delivery) maps to one
    job id, so a replay of it adds no job, even after the job finished. Without an id the content names
    the job, and it only joins a job still queued, taking this receipt's time (`JobQueue._content_seen_again`):
    once that job has been taken by a worker, or has run, the same content is queued again, or a page that
    changes A → B → A would find its third version joined to the first and keep B.
    """
    parts = (
        canonicalize_url(page.url),
        page.url,
        page.title or "",
        page.description or "",
        page.language or "",
        page.crawl_id or "",
        page.markdown,
        delivery_id or "",
        "",  # each part ends with a NUL, the last one too
    )
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8"))
    return f"{INDEX_JOB_ID_PREFIX}{digest.hexdigest()[:40]}"


def change_delivery_id(change_event_id: int) -> str:
    """The delivery id of the index job a change event's rescrape queues."""
    return f"change-{change_event_id}"


def removal_job_id(change_event_id: int) -> str:
    return f"remove-{change_event_id}"


def rescrape_job_id(change_event_id: int) -> str:
    return f"rescrape-{change_event_id}"


def reconcile_job_id(crawl_id: str, kind: str) -> str:
    """One reconciliation per crawl at a time: a replayed `*.completed` webhook adds no second one."""
    return f"reconcile-{kind}-{crawl_id}"


# A Redis that stops answering fails a call in 30 s instead of hanging it; idle connections are checked.
_CLIENT_TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
    "health_check_interval": 30,
}


def connect_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, **_CLIENT_TIMEOUTS)


def connect_async_redis(url: str) -> aioredis.Redis:
    """`connect_redis` for an event loop, with the same timeouts."""
    return async_client(url, **_CLIENT_TIMEOUTS)


@dataclass(frozen=True)
class _JobSpec:
    queue: str
    function: str
    args: tuple[Any, ...]
    job_id: str
    timeout: int
    retries: int
    intervals: list[int]
    description: str
    delay_seconds: int = 0  # > 0: the job waits in the scheduled registry first
    join_done: bool = True  # False: a job of the same id that has ended is replaced, not joined


class JobQueue:
    """Queues crawldex's jobs; an enqueue of a job id that is pending (or done, for a delivery) joins it.

    The synchronous methods serve worker threads and tools; ``enqueue_pages`` serves the API's event loop
    on ``async_connection`` (one round trip for a delivery's pages, shared with the deliveries that arrive
    while one is out; no thread), when it has one.
    """

    def __init__(
        self,
        connection: redis.Redis,
        settings: Settings,
        *,
        async_connection: aioredis.Redis | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.connection = connection
        self._async_connection = async_connection
        self._settings = settings
        self._random = random
        self._queues = {
            name: Queue(name, connection=connection, serializer=JSONSerializer)
            for name in (QUEUE_INDEXING, QUEUE_RESCRAPE)
        }
        self._shared_fields: dict[tuple[str, str, int, int], str] = {}
        self._memory = RedisMemoryGauge(
            connection,
            async_connection,
            refuse_ratio=settings.redis_memory_refuse_ratio,
            interval_seconds=settings.redis_memory_check_seconds,
        )
        self._enqueue_script = connection.register_script(_ENQUEUE_UNIQUE)
        self._refresh_queued = connection.register_script(_REFRESH_QUEUED)
        # The API's deliveries of pages: those that arrive while one script run is out go in the next.
        self._index_deliveries: GroupCommit[_DeliveryPart, list[Any]] | None = None
        self._held_script: HeldScript | None = None
        if async_connection is not None:
            # One script run is out at a time, so the runs keep one connection of the pool for good instead of
            # leasing one for each (`HeldScript`). A run it sends again after a dropped connection may have been
            # done: then its jobs exist and are joined, and its rate charges count twice.
            held_script = self._held_script = HeldScript(async_connection.connection_pool, _ENQUEUE_UNIQUE)

            async def run_deliveries(parts: list[_DeliveryPart]) -> list[list[Any]]:
                keys, args = self._script_arguments(QUEUE_INDEXING, parts)
                return list(await held_script(keys, args))

            self._index_deliveries = GroupCommit(run_deliveries, max_items=_DELIVERIES_A_RUN)

    async def aclose(self) -> None:
        """Give the script runs' connection back to its pool (which its owner closes). Call it on the loop
        the deliveries ran on; the synchronous connection is its owner's too."""
        if self._held_script is not None:
            await self._held_script.aclose()

    def enqueue_index(
        self,
        page: PageDocument,
        *,
        delivery_id: str | None = None,
        change_event_id: int | None = None,
        meta: dict[str, Any] | None = None,
        refuse_when_full: bool = True,
    ) -> EnqueuedJob:
        """Queue ``page``; a repeated ``delivery_id`` for the same page returns the existing job.

        With ``change_event_id`` the index worker closes that change event when it is done. Refused with
        `RedisFullError` while Redis is nearly full, unless ``refuse_when_full`` is False: for a job that
        finishes work already taken (a re-scrape hands its page on), which refusing would lose.
        """
        spec = self._index_spec(page, delivery_id, change_event_id)
        job_id, deduplicated = self._enqueue(spec, meta, refuse_when_full=refuse_when_full)
        return EnqueuedJob(job_id=job_id, url=page.url, deduplicated=deduplicated)

    async def enqueue_pages(
        self,
        pages: Sequence[PageDocument],
        *,
        delivery_id: str | None,
        meta: dict[str, Any] | None,
        charge: RateCharge | None = None,
    ) -> list[EnqueuedJob]:
        """`enqueue_index` for each of one delivery's pages, from an event loop, in one round trip to Redis.

        With ``charge`` (the webhook's rate limit) the request is counted in that same round trip, and if the
        charge is refused nothing is queued: `RateLimitedError`. Deliveries that arrive while a round trip is
        out go together in the next one (`GroupCommit`), each with its own charge and answer; a failure of
        that round trip (Redis away) reaches each of them. A page whose job id exists is looked up (one
        more round trip): joined while that job is pending or done, and only in the rare case of a job that
        failed for good (or was stopped) handed to `enqueue_index`, in a thread, which replaces it.
        """
        if not pages:
            return []
        specs = [self._index_spec(page, delivery_id, None) for page in pages]
        with self._enqueue_span(QUEUE_INDEXING, [spec.job_id for spec in specs]):
            await self._memory.check_async()
            part = self._delivery_part(specs, meta, charge)  # in the span: the jobs carry it as parent
            if self._index_deliveries is not None:
                answer = await self._index_deliveries.submit(part)
            else:
                (answer,) = await asyncio.to_thread(self._run_deliveries, QUEUE_INDEXING, [part])
            if charge is not None:
                decision = charge.counted(answer[:3])
                if not decision.allowed:
                    raise RateLimitedError(decision)
            enqueued: list[EnqueuedJob] = []
            for spec, page, was_queued in zip(specs, pages, answer[3:], strict=True):
                if was_queued:
                    series(JOBS_ENQUEUED, spec.queue).inc()
                    job_id, deduplicated = spec.job_id, False
                else:
                    job_id, deduplicated = await self._join_or_replace(spec, meta)
                enqueued.append(EnqueuedJob(job_id=job_id, url=page.url, deduplicated=deduplicated))
            return enqueued

    async def _join_or_replace(self, spec: _JobSpec, meta: dict[str, Any] | None) -> tuple[str, bool]:
        """A job of this one's id exists: joined (deduplicated: True) if it stands for this one, else
        replaced, in a thread; the job id and whether it was deduplicated."""
        if self._async_connection is not None:
            stored = await self._async_connection.hget(Job.key_for(spec.job_id), "status")
        else:
            stored = await asyncio.to_thread(self.connection.hget, Job.key_for(spec.job_id), "status")
        status = _status_text(stored)
        if not spec.join_done and status in _PENDING:
            return await asyncio.to_thread(self._content_seen_again, spec, meta, status)
        if self._joins(spec, status):
            return spec.job_id, True
        return await asyncio.to_thread(self._enqueue_unique, spec, meta)

    def _content_seen_again(
        self, spec: _JobSpec, meta: dict[str, Any] | None, status: str
    ) -> tuple[str, bool]:
        """A page named by its content (no delivery id) whose job is pending.

        A queued job of it is joined, and takes this delivery's page (the same content, received now): a
        newer version of the page queued behind it then finds the index newer than itself and is superseded,
        as it would behind a job of its own. A job running or waiting for a retry has read its page already:
        joined, it would write it as received then, and a version queued since would win over this one (a
        page that changes A, B, A would end on B). So this delivery gets a job of its own, named by the
        content and the time.
        """
        if status == JobStatus.QUEUED:
            data = _job_data(_serialized((spec.function, None, spec.args, {})))
            keys = [Job.key_for(spec.job_id), self._queues[spec.queue].key]
            if self._refresh_queued(keys=keys, args=[data, spec.job_id, REFRESH_SEARCH_DEPTH]):
                JOBS_DEDUPLICATED.labels(spec.queue).inc()
                return spec.job_id, True
        # Taken by a worker since it was queued, or not queued at all.
        return self._enqueue_unique(replace(spec, job_id=f"{spec.job_id}-{time.time_ns():x}"), meta)

    def _index_spec(
        self, page: PageDocument, delivery_id: str | None, change_event_id: int | None
    ) -> _JobSpec:
        settings = self._settings
        job_id = index_job_id(
            page, delivery_id if change_event_id is None else change_delivery_id(change_event_id)
        )
        return _JobSpec(
            QUEUE_INDEXING,
            INDEX_JOB,
            (page.model_dump(mode="json"), change_event_id),
            job_id,
            settings.index_job_timeout_seconds,
            settings.index_job_retries,
            list(settings.index_job_retry_intervals),
            f"index {page.url}",
            join_done=delivery_id is not None or change_event_id is not None,
        )

    def enqueue_removal(
        self,
        url: str,
        change_event_id: int | None,
        *,
        received_at: datetime | None = None,
        refuse_when_full: bool = True,
    ) -> EnqueuedJob:
        """Queue the removal of a gone page's chunks (the index worker owns the vector store).

        ``received_at`` is when the page was seen gone: content indexed after that is newer and stays.
        ``refuse_when_full`` as for `enqueue_index`.
        """
        settings = self._settings
        job_id = (
            removal_job_id(change_event_id) if change_event_id is not None else f"remove-{uuid.uuid4().hex}"
        )
        seen_gone = (received_at or utc_now()).isoformat()
        spec = _JobSpec(
            QUEUE_INDEXING,
            REMOVE_JOB,
            (url, change_event_id, seen_gone),
            job_id,
            settings.index_job_timeout_seconds,
            settings.index_job_retries,
            list(settings.index_job_retry_intervals),
            f"remove {url}",
        )
        deduplicated = self._enqueue(spec, None, refuse_when_full=refuse_when_full)[1]
        return EnqueuedJob(job_id=job_id, url=url, deduplicated=deduplicated)

    def enqueue_rescrape(
        self, change_event_id: int, url: str, *, refuse_when_full: bool = True
    ) -> EnqueuedJob:
        """Queue a change event's rescrape; ``refuse_when_full`` as for `enqueue_index`."""
        settings = self._settings
        job_id = rescrape_job_id(change_event_id)
        spec = _JobSpec(
            QUEUE_RESCRAPE,
            RESCRAPE_JOB,
            (change_event_id,),
            job_id,
            settings.rescrape_job_timeout_seconds,
            settings.rescrape_job_retries,
            list(settings.rescrape_job_retry_intervals),
            f"rescrape {url}",
        )
        deduplicated = self._enqueue(spec, None, refuse_when_full=refuse_when_full)[1]
        return EnqueuedJob(job_id=job_id, url=url, deduplicated=deduplicated)

    def rerun_rescrape(self, change_event_id: int, url: str) -> EnqueuedJob:
        """Queue a change event's rescrape again although its job ran (or vanished): its work was lost. Never
        refused for a nearly full Redis: the event was accepted, and the sweep that calls this would fail it."""
        try:
            existing = self._fetch(rescrape_job_id(change_event_id))
            if existing is not None and existing.get_status(refresh=False) not in _PENDING:
                existing.delete(remove_from_queue=True)
        except redis.RedisError as exc:
            raise DependencyUnavailableError("redis", f"{type(exc).__name__}: {exc}") from exc
        return self.enqueue_rescrape(change_event_id, url, refuse_when_full=False)

    def enqueue_reconcile(
        self, crawl_id: str, kind: str, *, delay_seconds: int = 0, rerun: bool = False
    ) -> EnqueuedJob:
        """Queue the reconciliation of a Firecrawl crawl (``kind`` crawl or batch_scrape) on the rescrape
        queue, after ``delay_seconds``. While one is pending (or finished, within the result TTL) the same
        job is returned; ``rerun`` (an operator's request) replaces a finished or failed one instead.

        Never refused for a nearly full Redis: the job carries no page, and reconciliation is how the pages
        refused meanwhile come back (the pages it recovers are new work, and are refused while it lasts)."""
        settings = self._settings
        job_id = reconcile_job_id(crawl_id, kind)
        if rerun:
            try:
                existing = self._fetch(job_id)
                if existing is not None and existing.get_status(refresh=False) not in _PENDING:
                    existing.delete(remove_from_queue=True)
            except redis.RedisError as exc:
                raise DependencyUnavailableError("redis", f"{type(exc).__name__}: {exc}") from exc
        spec = _JobSpec(
            QUEUE_RESCRAPE,
            RECONCILE_JOB,
            (crawl_id, kind),
            job_id,
            settings.reconcile_job_timeout_seconds,
            settings.rescrape_job_retries,
            list(settings.rescrape_job_retry_intervals),
            f"reconcile {kind} {crawl_id}",
            delay_seconds,
        )
        meta = {"crawl_id": crawl_id, "kind": kind}
        deduplicated = self._enqueue(spec, meta, refuse_when_full=False)[1]
        return EnqueuedJob(job_id=job_id, url=crawl_id, deduplicated=deduplicated)

    def _enqueue(
        self, spec: _JobSpec, meta: dict[str, Any] | None, *, refuse_when_full: bool
    ) -> tuple[str, bool]:
        """Put the job on its queue unless the same job id is pending or done: its id, and whether it was
        (deduplicated). With ``refuse_when_full``, not while Redis is nearly full (`RedisFullError`)."""
        with self._enqueue_span(spec.queue, [spec.job_id]):
            if refuse_when_full:
                self._memory.check()
            return self._enqueue_unique(spec, meta)

    @contextmanager
    def _enqueue_span(self, queue: str, job_ids: list[str]) -> Iterator[None]:
        """A producer span around the enqueue (when traced); Redis errors become `DependencyUnavailableError`."""
        span = (
            tracer().start_as_current_span(
                f"enqueue {queue}",
                kind=SpanKind.PRODUCER,
                attributes=queue_span_attributes(
                    queue,
                    {
                        "messaging.batch.message_count": len(job_ids),
                        "crawldex.job_id": job_ids[0] if len(job_ids) == 1 else "",
                    },
                ),
            )
            if tracing_enabled()
            else nullcontext()
        )
        with span:
            try:
                yield
            except redis.RedisError as exc:
                raise DependencyUnavailableError("redis", f"{type(exc).__name__}: {exc}") from exc

    def _enqueue_unique(self, spec: _JobSpec, meta: dict[str, Any] | None) -> tuple[str, bool]:
        for _ in range(2):
            if spec.delay_seconds > 0:
                queued = self._schedule_unique(spec, self._queued_job(spec, meta))
            else:
                (answer,) = self._run_deliveries(spec.queue, [self._delivery_part([spec], meta, None)])
                queued = bool(answer[3])
            if queued:
                JOBS_ENQUEUED.labels(spec.queue).inc()
                return spec.job_id, False
            existing = self._fetch(spec.job_id)
            if existing is not None:
                status = _status_text(existing.get_status(refresh=False))
                if not spec.join_done and status in _PENDING:
                    return self._content_seen_again(spec, meta, status)
                if self._joins(spec, status):
                    return spec.job_id, True
                # The same delivery once failed for good (or was stopped), or content without a delivery
                # id whose job has ended: sending it again runs it again.
                existing.delete(remove_from_queue=True)
        return spec.job_id, True

    def _joins(self, spec: _JobSpec, status: str | None) -> bool:
        """Whether a job of the same id in ``status`` stands for this one (counted as deduplicated)."""
        # A job named by its content (not join_done) is joined by `_content_seen_again` while pending and
        # replaced once ended. JobStatus is a str enum: a stored status is found in the set as it is.
        if not spec.join_done or status not in _PENDING_OR_DONE:
            return False
        JOBS_DEDUPLICATED.labels(spec.queue).inc()
        return True

    def _queued_job(self, spec: _JobSpec, meta: dict[str, Any] | None) -> Job:
        """The job as RQ's enqueue stores it: queued (or scheduled), with its origin and enqueue time."""
        retries = spec.retries
        job = self._queues[spec.queue].create_job(
            spec.function,
            args=spec.args,
            job_id=spec.job_id,
            timeout=spec.timeout,
            result_ttl=self._settings.job_result_ttl_seconds,
            failure_ttl=self._settings.job_failure_ttl_seconds,
            retry=Retry(max=retries, interval=self._jittered(spec.intervals)) if retries > 0 else None,
            meta=self._meta(meta),
            description=spec.description,
            status=JobStatus.SCHEDULED if spec.delay_seconds > 0 else JobStatus.QUEUED,
        )
        job.origin = spec.queue
        if spec.delay_seconds <= 0:
            job.enqueued_at = rq_now()
        return job

    @staticmethod
    def _meta(meta: dict[str, Any] | None) -> dict[str, Any]:
        return {**(meta or {}), TRACE_META_KEY: inject_context()}

    def _delivery_part(
        self, specs: Sequence[_JobSpec], meta: dict[str, Any] | None, charge: RateCharge | None
    ) -> _DeliveryPart:
        """One delivery's keys and arguments for `_ENQUEUE_UNIQUE`: ``specs`` and ``charge``, if any."""
        keys = [Job.key_for(spec.job_id) for spec in specs]
        args: list[Any] = [len(specs), "", ""]
        if charge is not None:
            keys.append(charge.key)
            args[1:] = [charge.limit.interval_us, charge.limit.capacity_us]
        for spec in specs:
            args += [spec.job_id, self._shared_fields_of(spec, meta), *self._own_values(spec, meta)]
        return _DeliveryPart(keys, args)

    def _script_arguments(self, queue: str, parts: Sequence[_DeliveryPart]) -> tuple[list[str], list[Any]]:
        """`_ENQUEUE_UNIQUE`'s keys and arguments for ``parts``, deliveries of jobs of ``queue``."""
        keys = [self._queues[queue].key, Queue.redis_queues_keys]
        args: list[Any] = [len(parts)]
        for part in parts:
            keys += part.keys
            args += part.args
        return keys, args

    def _run_deliveries(self, queue: str, parts: Sequence[_DeliveryPart]) -> list[list[Any]]:
        """`_ENQUEUE_UNIQUE` for ``parts`` on the synchronous connection: each delivery's answer."""
        keys, args = self._script_arguments(queue, parts)
        return list(self._enqueue_script(keys, args))

    def _shared_fields_of(self, spec: _JobSpec, meta: dict[str, Any] | None) -> str:
        """The fields of the job's hash that every job of its kind shares, as `_ENQUEUE_UNIQUE` takes them: one
        JSON array of names and values, taken from one job RQ built (made once a kind)."""
        shared_key = (spec.queue, spec.function, spec.timeout, spec.retries)
        shared = self._shared_fields.get(shared_key)
        if shared is None:
            model = self._queued_job(spec, meta).to_dict()
            shared = json.dumps(
                [
                    _hash_text(item)
                    for name, value in model.items()
                    if value is not None and name not in _OWN_FIELDS
                    for item in (name, value)
                ]
            )
            self._shared_fields[shared_key] = shared
        return shared

    def _own_values(self, spec: _JobSpec, meta: dict[str, Any] | None) -> list[Any]:
        """The values of the job's own fields of its hash as RQ's `Job.to_dict` writes them (with
        `_shared_fields_of`, the whole hash), in `_ENQUEUE_UNIQUE`'s order, without an RQ `Job` for each page (its
        construction and `to_dict` were a tenth of a webhook's CPU): made here with RQ's time format and JSON.
        The script names them: half the arguments a job to pack."""
        return [
            rq_time(rq_now()),  # created and enqueued at once
            _job_data(_serialized((spec.function, None, spec.args, {}))),
            spec.description,
            _serialized(self._meta(meta)),
            # As `json.dumps` writes a list of integers, as RQ writes it, without its encoder's set-up.
            f"[{', '.join(map(str, self._jittered(spec.intervals)))}]" if spec.retries > 0 else "",
        ]

    def _schedule_unique(self, spec: _JobSpec, job: Job) -> bool:
        """Into the scheduled registry unless the job id exists (RQ's `enqueue_in` is never unique)."""
        try:
            self._queues[spec.queue].schedule_job(
                job, utc_now() + timedelta(seconds=spec.delay_seconds), unique=True
            )
        except DuplicateJobError:
            return False
        return True

    def _jittered(self, intervals: list[int]) -> list[int]:
        """This job's retry waits: the configured ones scaled by one factor drawn in (1 ± jitter), so the jobs
        an outage failed together come back spread out instead of all at once."""
        jitter = self._settings.job_retry_jitter
        factor = 1.0 + jitter * (2.0 * self._random() - 1.0)
        return [max(1, round(seconds * factor)) for seconds in intervals]

    def _fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    def get_job(self, job_id: str) -> JobView | None:
        try:
            job = self._fetch(job_id)
            if job is None:
                return None
            status = job.get_status(refresh=False)
            result = job.latest_result()
        except redis.RedisError as exc:
            raise DependencyUnavailableError("redis", f"{type(exc).__name__}: {exc}") from exc
        error = None
        if result is not None and result.exc_string:
            lines = [line for line in result.exc_string.strip().splitlines() if line.strip()]
            error = lines[-1] if lines else result.exc_string
        return JobView(
            job_id=job.id,
            queue=job.origin,
            status=str(status.value if status else "unknown"),
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            ended_at=job.ended_at,
            result=result.return_value if result is not None else None,
            error=error,
            retries_left=job.retries_left,
            worker_name=job.worker_name or None,
            meta=dict(job.meta or {}),
        )

    def health(self) -> None:
        try:
            self.connection.ping()
        except redis.RedisError as exc:
            raise DependencyUnavailableError("redis", f"{type(exc).__name__}: {exc}") from exc
