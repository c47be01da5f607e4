"""The index API: queue a page (async), or index it now and report stage timings (diagnostics)."""

from __future__ import annotations

from fastapi import APIRouter, status

from ingest_api.deps import Authenticated, ServicesDep
from ingest_api.schemas import ErrorResponse, IndexRequest, QueuedResponse, TestIndexResponse, TestIndexStep

router = APIRouter(prefix="/api", tags=["indexing"], dependencies=Authenticated)
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "The body cannot be read (not UTF-8 JSON)"},
    401: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


@router.post(
    "/index",
    response_model=QueuedResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_ERRORS,
    summary="Queue a page for indexing",
)
async def index_page(body: IndexRequest, services: ServicesDep) -> QueuedResponse:
    page = body.to_page()
    (enqueued,) = await services.queue.enqueue_pages([page], delivery_id=None, meta={"source": "api"})
    return QueuedResponse(job_id=enqueued.job_id, url=enqueued.url, deduplicated=enqueued.deduplicated)


@router.post(
    "/test-index",
    response_model=TestIndexResponse,
    responses=_ERRORS,
    summary="Index a page now, in this process, and report per-stage timings",
)
async def test_index(body: IndexRequest, services: ServicesDep) -> TestIndexResponse:
    outcome = await services.pipeline.index(body.to_page(), force=True)
    steps = [
        TestIndexStep(step=name, duration_ms=ms) for name, ms in outcome.timings_ms.items() if name != "total"
    ]
    return TestIndexResponse(
        status=outcome.status,
        url=outcome.url,
        doc_id=outcome.doc_id,
        chunk_count=outcome.chunk_count,
        timings_ms=outcome.timings_ms,
        steps=steps,
    )
