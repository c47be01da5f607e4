"""Job status."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Path, status

from ingest_api.deps import Authenticated, ServicesDep
from ingest_api.schemas import ErrorResponse, JobResponse

# The ids RQ can hold: it refuses others (a 500 if it got them) and reads "a:b" as job "a".
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
router = APIRouter(prefix="/api/jobs", tags=["jobs"], dependencies=Authenticated)


@router.get(
    "/{job_id}",
    response_model=JobResponse,
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    summary="Status, result or error of a queued job",
)
async def get_job(
    services: ServicesDep, job_id: str = Path(min_length=1, max_length=128, pattern=JOB_ID_PATTERN)
) -> JobResponse:
    view = await asyncio.to_thread(services.queue.get_job, job_id)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r} (unknown, or its result expired)")
    return JobResponse(
        job_id=view.job_id,
        queue=view.queue,
        status=view.status,
        enqueued_at=view.enqueued_at,
        started_at=view.started_at,
        ended_at=view.ended_at,
        result=view.result,
        error=view.error,
        retries_left=view.retries_left,
        worker=view.worker_name,
    )
