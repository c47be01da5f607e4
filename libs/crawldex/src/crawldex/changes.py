"""Opening change events and queueing their work: one implementation for every source of a change.

changedetection.io notifications, Firecrawl monitor events and the operator CLI (`crawldex reindex`,
`crawldex purge`) all report "this page changed" (or "is gone") the same way: a change event row, then a
rescrape job (or, for a removed page, a removal job) that closes it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import partial
from typing import NamedTuple

from crawldex.adapters.queue import JobQueue, removal_job_id
from crawldex.db.change_events import ChangeEventRecord, ChangeEventRepository
from crawldex.db.tables import CHANGE_EVENT_OPEN, ChangeEventStatus
from crawldex.errors import DependencyUnavailableError
from crawldex.models import utc_now

SOURCE_OPERATOR = "operator"


class OpenedChange(NamedTuple):
    event: ChangeEventRecord
    job_id: str | None
    joined: bool  # the notification joined an event still waiting for its fetch


async def open_change(
    change_events: ChangeEventRepository,
    queue: JobQueue,
    *,
    source: str,
    url: str,
    canonical_url: str,
    watch_uuid: str | None,
    detected_at: datetime | None,
    removed: bool,
) -> OpenedChange:
    """Record the change and queue its work: a rescrape, or (for a page reported removed) its removal."""
    event, joined = await change_events.open(
        source=source,
        watch_uuid=watch_uuid,
        url=url,
        canonical_url=canonical_url,
        detected_at=detected_at,
        status=ChangeEventStatus.INDEXING if removed else ChangeEventStatus.QUEUED,
    )
    try:
        if removed:
            job_id = removal_job_id(event.id)
            await change_events.start_indexing(event.id, job_id)
            await asyncio.to_thread(partial(queue.enqueue_removal, received_at=utc_now()), url, event.id)
            return OpenedChange(event, job_id, False)
        # Queued again for a joined notification too: idempotent by job id, and it re-creates the job if
        # the first was lost (the API died between the row and the job, or Redis lost it).
        job = await asyncio.to_thread(queue.enqueue_rescrape, event.id, event.url)
    except DependencyUnavailableError as exc:
        if not joined:  # no job will ever close this event: end it, so the watch is not tied to it
            await change_events.finish(event.id, ChangeEventStatus.FAILED, error=f"could not queue: {exc}")
        raise
    if not joined:
        await change_events.set_rescrape_job(event.id, job.job_id)
    return OpenedChange(event, job.job_id, joined)


async def prepare_rerun(
    change_events: ChangeEventRepository, change_event_id: int, *, rescrape: bool
) -> str | None:
    """Ready a failed job's change event for the job to run again; returns why not to re-run it, or None.

    The job's last failure ended its event `failed`, and a job whose event has ended does nothing (a
    rescrape returns at once), so the event is opened again first: `queued` for a rescrape, `indexing`
    for an index or removal job.
    """
    status = ChangeEventStatus.QUEUED if rescrape else ChangeEventStatus.INDEXING
    if await change_events.reopen_failed(change_event_id, status):
        return None
    event = await change_events.get(change_event_id)
    if event is not None and event.status == ChangeEventStatus.FAILED:
        return (
            f"change event {change_event_id} stays failed: a newer change event of {event.url} is queued "
            "and will fetch it"
        )
    return rerun_obstacle(change_event_id, event, rescrape=rescrape)


def rerun_obstacle(change_event_id: int, event: ChangeEventRecord | None, *, rescrape: bool) -> str | None:
    """Why a job of this change event must not run again, or None (the event is failed or still open)."""
    if event is None:
        # An index or removal job does its work without its event; a rescrape cannot (it reads the URL there).
        return f"its change event {change_event_id} no longer exists" if rescrape else None
    if event.status == ChangeEventStatus.FAILED or event.status in CHANGE_EVENT_OPEN:
        return None  # open: its worker died on the last try, and the job closes the event when it runs
    return f"change event {change_event_id} has ended {event.status}"
