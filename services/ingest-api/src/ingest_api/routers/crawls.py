"""Crawls: what each Firecrawl crawl delivered and what became of its pages; reconciliation on request."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse

from crawldex.crawls import ReconciliationUnavailableError, request_reconciliation
from crawldex.db.crawls import CrawlSummary
from ingest_api.deps import Authenticated, ServicesDep, SettingsDep
from ingest_api.errors import problem
from ingest_api.schemas import (
    CrawlResponse,
    ErrorResponse,
    ReconcileQueuedResponse,
    ReconciliationRunResponse,
)

router = APIRouter(prefix="/api/crawls", tags=["crawls"], dependencies=Authenticated)
_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
CrawlId = Annotated[
    str, Path(min_length=1, max_length=256, description="Firecrawl's crawl or batch scrape id")
]


def _response(summary: CrawlSummary, *, reconciliation_enabled: bool) -> CrawlResponse:
    last = summary.last_reconciliation
    return CrawlResponse(
        crawl_id=summary.crawl_id,
        kind=summary.kind,
        status=summary.status,
        pages_received=summary.pages_received,
        pages_recovered=summary.pages_recovered,
        pages_indexed=summary.pages_indexed,
        pages_failed=summary.pages_failed,
        pages_pending=summary.pages_pending,
        first_seen_at=summary.first_seen_at,
        last_seen_at=summary.last_seen_at,
        reconciliation_enabled=reconciliation_enabled,
        reconciliations=summary.reconciliations,
        last_reconciliation=(
            ReconciliationRunResponse.model_validate(last, from_attributes=True) if last is not None else None
        ),
    )


@router.get(
    "/{crawl_id}",
    response_model=CrawlResponse,
    responses={**_ERRORS, 404: {"model": ErrorResponse}},
    summary="A crawl's status and page counts (received, recovered, indexed, failed, pending)",
)
async def get_crawl(services: ServicesDep, settings: SettingsDep, crawl_id: CrawlId) -> CrawlResponse:
    await services.received_pages.flush()  # what was sent to this replica is in the answer
    summary = await services.crawls.summary(crawl_id)
    if summary is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no crawl {crawl_id!r}: no webhook of it arrived and it was never reconciled",
        )
    return _response(summary, reconciliation_enabled=settings.firecrawl_url is not None)


@router.post(
    "/{crawl_id}/reconcile",
    response_model=ReconcileQueuedResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **_ERRORS,
        409: {
            "model": ErrorResponse,
            "description": "Reconciliation is off: CRAWLDEX_FIRECRAWL_URL is not set",
        },
    },
    summary="Read the crawl's results back from Firecrawl and index every page no webhook brought",
)
async def reconcile_crawl(
    services: ServicesDep,
    settings: SettingsDep,
    crawl_id: CrawlId,
    kind: Annotated[
        Literal["crawl", "batch_scrape"] | None,
        Query(description="crawl or batch_scrape; default: as the crawl's webhooks said, else crawl"),
    ] = None,
) -> ReconcileQueuedResponse | JSONResponse:
    if not settings.firecrawl_url:
        return problem(
            409,
            "crawl reconciliation is off: it reads the crawl's results from Firecrawl's API, and "
            "CRAWLDEX_FIRECRAWL_URL is not set",
        )
    if kind is None:
        known = await services.crawls.summary(crawl_id)
        kind = "batch_scrape" if known is not None and known.kind == "batch_scrape" else "crawl"
    try:
        job = await asyncio.to_thread(request_reconciliation, services.queue, settings, crawl_id, kind)
    except ReconciliationUnavailableError as exc:
        return problem(409, str(exc))
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return ReconcileQueuedResponse(
        status="already_queued" if job.deduplicated else "queued",
        crawl_id=crawl_id,
        kind=kind,
        job_id=job.job_id,
    )
