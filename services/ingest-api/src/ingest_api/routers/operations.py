"""Operation metrics: timed stages and jobs, with summary statistics."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from crawldex.db.repository import OperationMetricsRepository, OperationQuery
from crawldex.models import utc_now
from ingest_api.deps import Authenticated, ServicesDep
from ingest_api.schemas import ErrorResponse, OperationRow, OperationsResponse, OperationSummaryRow

router = APIRouter(prefix="/api/metrics", tags=["metrics"], dependencies=Authenticated)


@router.get(
    "/operations",
    response_model=OperationsResponse,
    responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    summary="Timed pipeline stages and jobs, with count, p50, p95 and failures per operation",
)
async def operations(
    services: ServicesDep,
    hours: Annotated[float, Query(gt=0, le=24 * 90, description="Look back this many hours")] = 24,
    operation_type: Annotated[str | None, Query(max_length=32, description="stage or job")] = None,
    operation_name: Annotated[str | None, Query(max_length=64, description="e.g. embed, or a queue")] = None,
    success: Annotated[bool | None, Query()] = None,
    crawl_id: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> OperationsResponse:
    repository = OperationMetricsRepository(services.database)
    query = OperationQuery(
        since=utc_now() - timedelta(hours=hours),
        operation_type=operation_type,
        operation_name=operation_name,
        success=success,
        crawl_id=crawl_id,
    )
    rows, total = await repository.rows(query, limit=limit, offset=offset)
    summary = await repository.summary(query)
    return OperationsResponse(
        hours=hours,
        total=total,
        limit=limit,
        offset=offset,
        summary=[OperationSummaryRow(**vars(s)) for s in summary],
        metrics=[OperationRow.model_validate(row, from_attributes=True) for row in rows],
    )
