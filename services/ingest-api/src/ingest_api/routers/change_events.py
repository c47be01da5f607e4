"""Change events: what was reported changed, and what became of each report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from crawldex.db.tables import ChangeEventStatus
from crawldex.errors import InvalidDocumentError
from crawldex.urls import canonicalize_url
from ingest_api.deps import Authenticated, ServicesDep
from ingest_api.schemas import ChangeEventResponse, ChangeEventsPage, ErrorResponse

router = APIRouter(prefix="/api/change-events", tags=["change events"], dependencies=Authenticated)
_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


@router.get("", response_model=ChangeEventsPage, responses=_ERRORS, summary="Change events, newest first")
async def list_change_events(
    services: ServicesDep,
    status_filter: Annotated[ChangeEventStatus | None, Query(alias="status")] = None,
    url: Annotated[str | None, Query(max_length=8192, description="The page (any form of its URL)")] = None,
    since: Annotated[datetime | None, Query(description="Received at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ChangeEventsPage:
    try:
        canonical = canonicalize_url(url) if url else None
    except InvalidDocumentError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    if since is not None:
        if since.tzinfo is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since needs a time zone (e.g. ...Z)")
        try:
            since = since.astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01T00:00+14:00 is before the first UTC time there is
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since is out of range") from exc
    events, total = await services.change_events.list(
        status=status_filter.value if status_filter else None,
        canonical_url=canonical,
        since=since,
        limit=limit,
        offset=offset,
    )
    return ChangeEventsPage(
        total=total,
        limit=limit,
        offset=offset,
        events=[ChangeEventResponse.model_validate(e, from_attributes=True) for e in events],
    )


@router.get(
    "/{event_id}",
    response_model=ChangeEventResponse,
    responses={**_ERRORS, 404: {"model": ErrorResponse}},
    summary="One change event",
)
async def get_change_event(
    services: ServicesDep, event_id: Annotated[int, Path(ge=1, le=2**62)]
) -> ChangeEventResponse:
    event = await services.change_events.get(event_id)
    if event is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no change event {event_id}")
    return ChangeEventResponse.model_validate(event, from_attributes=True)
