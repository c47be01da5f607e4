"""Prometheus exposition: the process's metrics plus the queue state read from Redis."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)")
async def metrics(request: Request) -> Response:
    queue_registry: CollectorRegistry = request.app.state.queue_metrics
    body = generate_latest(REGISTRY) + await asyncio.to_thread(generate_latest, queue_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
