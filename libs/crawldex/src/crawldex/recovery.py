"""Recovery of change events whose work was lost outside our code.

A change event is closed by the job that does its work, also when that job fails for good. Two cases escape
that: the job's worker died on its last try (RQ moves it to the failed registry, no code of ours runs), and
the job vanished (a Redis that lost its data, an API that died between recording the event and queueing
its job). A periodic sweep finds open events nobody has touched for a while and looks at their job: a failed
job closes the event `failed` with the job's error, a finished index job closes it as the job's result
says, and a lost job is queued again (the rescrape, which fetches the page anew).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from crawldex.adapters.queue import JobQueue, JobView, rescrape_job_id
from crawldex.db.change_events import ChangeEventRecord, ChangeEventRepository
from crawldex.db.tables import ChangeEventStatus
from crawldex.models import IndexStatus, utc_now

log = logging.getLogger(__name__)

_PENDING = {"queued", "started", "deferred", "scheduled"}
_ENDED_BADLY = {"failed", "stopped", "canceled"}


@dataclass
class RecoveryReport:
    examined: int = 0
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)


def _outcome_status(result: Any) -> ChangeEventStatus:
    """The final status of an event whose index (or removal) job finished, from the job's result."""
    status = result.get("status") if isinstance(result, dict) else None
    if status == "gone":
        return ChangeEventStatus.GONE
    if status in (IndexStatus.UNCHANGED, IndexStatus.SUPERSEDED):
        return ChangeEventStatus.UNCHANGED
    return ChangeEventStatus.INDEXED


async def recover_change_events(
    events: ChangeEventRepository,
    queue: JobQueue,
    *,
    untouched_for: timedelta,
    limit: int = 500,
) -> RecoveryReport:
    """Settle open change events not updated for ``untouched_for`` whose job is no longer pending."""
    report = RecoveryReport()
    for event in await events.list_open(updated_before=utc_now() - untouched_for, limit=limit):
        report.examined += 1
        await _settle(event, events, queue, report)
    if report.requeued or report.failed or report.closed:
        log.warning(
            "change events recovered: %d requeued %s, %d failed %s, %d closed %s",
            len(report.requeued),
            report.requeued[:20],
            len(report.failed),
            report.failed[:20],
            len(report.closed),
            report.closed[:20],
        )
    return report


async def _settle(
    event: ChangeEventRecord, events: ChangeEventRepository, queue: JobQueue, report: RecoveryReport
) -> None:
    indexing = event.status == ChangeEventStatus.INDEXING and event.index_job_id is not None
    job_id = event.index_job_id if indexing and event.index_job_id else rescrape_job_id(event.id)
    job: JobView | None = await asyncio.to_thread(queue.get_job, job_id)
    if job is not None and job.status in _PENDING:
        return
    if job is not None and job.status in _ENDED_BADLY:
        error = job.error or f"job {job_id} ended {job.status}"
        if await events.finish(event.id, ChangeEventStatus.FAILED, error=f"recovered: {error}"[:4000]):
            report.failed.append(event.id)
        return
    if job is not None and indexing:  # finished, but the event did not hear of it
        if await events.finish(event.id, _outcome_status(job.result)):
            report.closed.append(event.id)
        return
    # Lost (or a finished rescrape whose index job was never recorded): fetch the page again.
    await asyncio.to_thread(queue.rerun_rescrape, event.id, event.url)
    await events.set_rescrape_job(event.id, rescrape_job_id(event.id))
    report.requeued.append(event.id)
