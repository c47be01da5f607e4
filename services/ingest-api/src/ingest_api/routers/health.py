"""Health: /health per dependency, /livez (process up), /readyz (can take webhooks)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from ingest_api.deps import ServicesDep
from ingest_api.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse}},
    summary="Per-dependency health: redis, database, vector store, embedder",
)
async def health(services: ServicesDep, response: Response) -> HealthResponse:
    checks = await services.health()
    healthy = all(value == "ok" for value in checks.values())
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthResponse(status="healthy" if healthy else "degraded", checks=checks)


@router.get("/livez", summary="The process is up")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready"}},
    summary="Ready to accept webhooks (started, Redis and database reachable)",
)
async def readyz(request: Request, response: Response) -> dict[str, str]:
    services = getattr(request.app.state, "services", None)
    if services is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "starting"}
    checks = await services.health(only=("redis", "database"))
    failing = {k: v for k, v in checks.items() if v != "ok"}
    if failing:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "not ready", **failing}
    return {"status": "ready"}
