"""Search."""

from __future__ import annotations

from fastapi import APIRouter

from crawldex.search import SearchRequest, SearchResponse
from ingest_api.deps import Authenticated, ServicesDep
from ingest_api.schemas import ErrorResponse

router = APIRouter(prefix="/api", tags=["search"], dependencies=Authenticated)


@router.post(
    "/search",
    response_model=SearchResponse,
    responses={
        400: {"model": ErrorResponse, "description": "The body cannot be read (not UTF-8 JSON)"},
        401: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
    summary="Hybrid, semantic or keyword (alias bm25) search over indexed chunks",
)
async def search(body: SearchRequest, services: ServicesDep) -> SearchResponse:
    return await services.search.search(body)
