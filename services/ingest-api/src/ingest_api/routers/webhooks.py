"""Webhooks: authenticated by their own schemes (HMAC for Firecrawl), not by the API bearer token."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status

from crawldex.errors import DependencyUnavailableError
from crawldex.services import Services
from crawldex.telemetry.metrics import WEBHOOKS_RECEIVED, WEBHOOKS_REJECTED, event_label
from crawldex.webhooks.firecrawl import (
    SIGNATURE_HEADER,
    FirecrawlDelivery,
    WebhookRejectedError,
    parse_delivery,
    verify_signature,
)
from ingest_api.deps import ServicesDep, SettingsDep
from ingest_api.errors import problem
from ingest_api.schemas import ErrorResponse, FailedDocument, WebhookResponse

router = APIRouter(prefix="/api/webhook", tags=["webhooks"])
SOURCE = "firecrawl"
log = logging.getLogger(__name__)


@router.post(
    "/firecrawl",
    response_model=WebhookResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"model": WebhookResponse, "description": "Lifecycle event or failed pages, recorded"},
        400: {"model": ErrorResponse},
        401: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
    summary="Receive a Firecrawl webhook (crawl.page, batch_scrape.page, lifecycle events)",
)
async def firecrawl_webhook(
    request: Request,
    response: Response,
    services: ServicesDep,
    settings: SettingsDep,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> WebhookResponse | Response:
    secret = settings.firecrawl_webhook_secret.get_secret_value() if settings.firecrawl_webhook_secret else ""
    if not secret:
        WEBHOOKS_REJECTED.labels(SOURCE, "not_configured").inc()
        return problem(
            503, "CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET is not configured; unsigned webhooks are refused"
        )
    body = await request.body()
    try:
        verify_signature(secret, body, signature)
        delivery = parse_delivery(body)
    except WebhookRejectedError as exc:
        WEBHOOKS_REJECTED.labels(SOURCE, "signature" if exc.status_code == 401 else "payload").inc()
        return problem(exc.status_code, exc.reason)
    try:
        return await _accept(delivery, response, services)
    except DependencyUnavailableError:
        WEBHOOKS_REJECTED.labels(SOURCE, "unavailable").inc()
        raise


async def _accept(delivery: FirecrawlDelivery, response: Response, services: Services) -> WebhookResponse:
    job_ids: list[str] = []
    deduplicated = 0
    for page in delivery.pages:
        enqueued = await asyncio.to_thread(
            services.queue.enqueue_index,
            page,
            delivery_id=delivery.webhook_id,
            meta={"crawl_id": delivery.crawl_id, "webhook_id": delivery.webhook_id, "source": "firecrawl"},
        )
        job_ids.append(enqueued.job_id)
        deduplicated += enqueued.deduplicated
    if delivery.failed or not delivery.is_page_event:
        try:
            await services.crawl_events.record(
                crawl_id=delivery.crawl_id,
                event_type=delivery.event_type,
                webhook_id=delivery.webhook_id,
                success=delivery.success and not delivery.failed,
                urls=[f.url for f in delivery.failed],
                error="; ".join(f.error for f in delivery.failed) or delivery.error,
            )
        except DependencyUnavailableError:
            if not job_ids:
                raise  # nothing else of this delivery was kept: 503, so the sender knows
            # The pages are queued; only the bookkeeping of the failed ones is lost. Say so, loudly.
            log.exception("could not record the failed pages of Firecrawl crawl %s", delivery.crawl_id)
    if job_ids:
        result_status = "queued"
    else:
        response.status_code = status.HTTP_200_OK
        result_status = "recorded" if delivery.is_page_event else "acknowledged"
    WEBHOOKS_RECEIVED.labels(SOURCE, event_label(delivery.event_type)).inc()
    return WebhookResponse(
        status=result_status,
        event=delivery.event_type,
        crawl_id=delivery.crawl_id,
        queued_jobs=len(job_ids),
        job_ids=job_ids,
        deduplicated_jobs=deduplicated,
        failed_documents=[FailedDocument(url=f.url, error=f.error) for f in delivery.failed],
    )
