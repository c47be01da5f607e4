"""Queue state for Prometheus, read from RQ's standard Redis keys when /metrics is scraped, and how full
Redis is (``INFO memory``): the queues are Redis's memory, and near its ``maxmemory`` new work is refused
(`crawldex.adapters.redis_memory`).

Read-only (LLEN, ZCARD, SCARD, HGET, INFO): a scrape never changes a registry, unlike some RQ helpers
that clean up as they count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from crawldex.adapters.redis_memory import memory_usage

QUEUE_KEY = "rq:queue:{}"
STARTED_KEY = "rq:wip:{}"
SCHEDULED_KEY = "rq:scheduled:{}"
FAILED_KEY = "rq:failed:{}"
WORKERS_KEY = "rq:workers:{}"
JOB_KEY = "rq:job:{}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _oldest_age_seconds(connection: redis.Redis, queue: str, now: datetime) -> float:
    head = connection.lindex(QUEUE_KEY.format(queue), 0)
    if head is None:
        return 0.0
    enqueued = connection.hget(JOB_KEY.format(_text(head)), "enqueued_at")
    if not enqueued:
        return 0.0
    try:
        stamp = datetime.fromisoformat(_text(enqueued).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return max(0.0, (now - stamp).total_seconds())


class QueueCollector(Collector):
    def __init__(self, connection: redis.Redis, queues: Sequence[str]) -> None:
        self._redis = connection
        self._queues = list(queues)

    def _live(self, worker_keys: set[bytes]) -> int:
        """Workers whose own key still exists: a killed worker stays in the set until a live worker's
        maintenance removes it, and a crash-looping deployment must read as zero workers."""
        if not worker_keys:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for key in worker_keys:
            pipe.exists(_text(key))
        return sum(1 for alive in pipe.execute() if alive)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("crawldex_queue_depth", "Jobs waiting in the queue.", labels=["queue"])
        age = GaugeMetricFamily(
            "crawldex_queue_oldest_job_age_seconds",
            "Age of the oldest waiting job (0 when empty).",
            labels=["queue"],
        )
        running = GaugeMetricFamily("crawldex_jobs_running", "Jobs being worked on.", labels=["queue"])
        scheduled = GaugeMetricFamily(
            "crawldex_jobs_scheduled", "Retries waiting for their time.", labels=["queue"]
        )
        failed = GaugeMetricFamily(
            "crawldex_jobs_failed_registry", "Jobs in the failed registry (out of retries).", labels=["queue"]
        )
        workers = GaugeMetricFamily("crawldex_workers", "Workers listening on the queue.", labels=["queue"])
        memory: list[GaugeMetricFamily] = []
        try:
            now = datetime.now(UTC)
            for queue in self._queues:
                pipe = self._redis.pipeline(transaction=False)
                pipe.llen(QUEUE_KEY.format(queue))
                pipe.zcard(STARTED_KEY.format(queue))
                pipe.zcard(SCHEDULED_KEY.format(queue))
                pipe.zcard(FAILED_KEY.format(queue))
                pipe.smembers(WORKERS_KEY.format(queue))
                n_depth, n_running, n_scheduled, n_failed, members = pipe.execute()
                n_workers = self._live(members)
                depth.add_metric([queue], n_depth)
                age.add_metric([queue], _oldest_age_seconds(self._redis, queue, now))
                running.add_metric([queue], n_running)
                scheduled.add_metric([queue], n_scheduled)
                failed.add_metric([queue], n_failed)
                workers.add_metric([queue], n_workers)
            memory = self._memory()
        except redis.RedisError:
            return  # no queue series while Redis is down: absent data, not a misleading zero
        yield from (depth, age, running, scheduled, failed, workers, *memory)

    def _memory(self) -> list[GaugeMetricFamily]:
        """Redis's used memory and maxmemory; none where Redis refuses INFO (an ACL, a proxy)."""
        try:
            used, maxmemory = memory_usage(self._redis.info("memory"))
        except redis.ResponseError:
            return []
        return [
            GaugeMetricFamily(
                "crawldex_redis_memory_used_bytes",
                "Memory Redis uses (INFO memory: used_memory).",
                value=used,
            ),
            GaugeMetricFamily(
                "crawldex_redis_maxmemory_bytes",
                "Redis's maxmemory (INFO memory: maxmemory); 0 when it has none.",
                value=maxmemory,
            ),
        ]
