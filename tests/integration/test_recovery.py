"""The change-event sweep settles events whose job was lost outside our code (real Redis and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from crawldex.adapters.queue import rescrape_job_id
from crawldex.db.change_events import ChangeEventRecord
from crawldex.db.tables import ChangeEventStatus
from crawldex.recovery import _outcome_status, recover_change_events
from crawldex.services import Services


async def open_event(services: Services, name: str) -> ChangeEventRecord:
    url = f"https://recovery.example/{name}"
    event, joined = await services.change_events.open(
        source="changedetection", watch_uuid=None, url=url, canonical_url=url, detected_at=None
    )
    assert not joined
    return event


async def test_sweep_requeues_lost_jobs_fails_failed_ones_and_leaves_pending_ones(services: Services) -> None:
    queue = services.queue
    lost = await open_event(services, "lost")  # its job vanished (e.g. Redis lost its data)
    failed = await open_event(services, "failed")  # its worker died on the last try
    pending = await open_event(services, "pending")  # its job waits in the queue: not ours to touch
    queue.enqueue_rescrape(failed.id, failed.url)
    job = Job.fetch(rescrape_job_id(failed.id), connection=queue.connection, serializer=JSONSerializer)
    job.set_status(JobStatus.FAILED)
    FailedJobRegistry(job.origin, connection=queue.connection).add(job, exc_string="AbandonedJobError")
    await services.change_events.start_fetching(failed.id)
    queue.enqueue_rescrape(pending.id, pending.url)

    report = await recover_change_events(services.change_events, queue, untouched_for=timedelta(0))

    assert report.examined == 3
    assert (report.requeued, report.failed, report.closed) == ([lost.id], [failed.id], [])
    requeued = queue.get_job(rescrape_job_id(lost.id))
    assert requeued is not None
    assert requeued.status == "queued"
    ended = await services.change_events.get(failed.id)
    assert ended is not None
    assert ended.status == ChangeEventStatus.FAILED
    assert ended.error is not None
    assert "failed" in ended.error
    still = await services.change_events.get(pending.id)
    assert still is not None
    assert still.status == ChangeEventStatus.QUEUED

    # A second pass finds the requeued job pending and changes nothing.
    again = await recover_change_events(services.change_events, queue, untouched_for=timedelta(0))
    assert (again.requeued, again.failed, again.closed) == ([], [], [])


async def test_sweep_leaves_recently_updated_events_alone(services: Services) -> None:
    await open_event(services, "fresh")
    report = await recover_change_events(
        services.change_events, services.queue, untouched_for=timedelta(hours=1)
    )
    assert report.examined == 0


async def test_a_rescrape_that_finished_without_recording_its_index_job_runs_again(
    services: Services,
) -> None:
    queue = services.queue
    event = await open_event(services, "half-done")
    queue.enqueue_rescrape(event.id, event.url)
    job = Job.fetch(rescrape_job_id(event.id), connection=queue.connection, serializer=JSONSerializer)
    job.set_status(JobStatus.FINISHED)
    report = await recover_change_events(services.change_events, queue, untouched_for=timedelta(0))
    assert report.requeued == [event.id]
    rerun = queue.get_job(rescrape_job_id(event.id))
    assert rerun is not None
    assert rerun.status == "queued"


def test_outcome_of_a_finished_index_job() -> None:
    assert _outcome_status({"status": "indexed"}) == ChangeEventStatus.INDEXED
    assert _outcome_status({"status": "empty"}) == ChangeEventStatus.INDEXED
    assert _outcome_status({"status": "unchanged"}) == ChangeEventStatus.UNCHANGED
    assert _outcome_status({"status": "superseded"}) == ChangeEventStatus.UNCHANGED
    assert _outcome_status({"status": "gone", "chunks_removed": 3}) == ChangeEventStatus.GONE
    assert _outcome_status(None) == ChangeEventStatus.INDEXED
