"""Webhooks: authenticated by their own schemes (HMAC for Firecrawl), not by the API bearer token."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.routing import APIRoute

from crawldex.adapters.rate_limit import RateCharge, RateLimitedError
from crawldex.changes import open_change
from crawldex.config import Settings
from crawldex.crawls import completion_kind, schedule_on_completion
from crawldex.errors import DependencyUnavailableError
from crawldex.services import Services
from crawldex.telemetry.metrics import WEBHOOKS_RECEIVED, WEBHOOKS_REJECTED, event_label, series
from crawldex.urls import canonicalize_url
from crawldex.webhooks.changedetection import TOKEN_HEADER as CHANGEDETECTION_TOKEN_HEADER
from crawldex.webhooks.changedetection import parse_notification
from crawldex.webhooks.firecrawl import (
    SIGNATURE_HEADER,
    FirecrawlDelivery,
    WebhookRejectedError,
    parse_delivery,
    verify_signature,
)
from crawldex.webhooks.replay import TIMESTAMP_HEADER, StaleDeliveryError, check_delivery_time
from ingest_api.deps import ServicesDep, SettingsDep, services_of
from ingest_api.errors import problem
from ingest_api.rate_limit import deferred_charge
from ingest_api.schemas import (
    CHANGEDETECTION_WEBHOOK_BODY,
    FIRECRAWL_WEBHOOK_BODY,
    ChangeWebhookResponse,
    ErrorResponse,
    FailedDocument,
    WebhookResponse,
    raw_body,
)

router = APIRouter(prefix="/api/webhook", tags=["webhooks"])
SOURCE = "firecrawl"
CHANGEDETECTION = "changedetection"
log = logging.getLogger(__name__)
MAX_TIMESTAMP_LENGTH = 64
_TIMESTAMP_DESCRIPTION = (
    "When the delivery was sent (unix seconds or RFC 3339), for senders or proxies that can add it; outside "
    "CRAWLDEX_WEBHOOK_REPLAY_WINDOW_SECONDS the delivery is refused (401)"
)
TimestampHeader = Annotated[
    str | None,
    Header(alias=TIMESTAMP_HEADER, max_length=MAX_TIMESTAMP_LENGTH, description=_TIMESTAMP_DESCRIPTION),
]
# What either webhook answers when it takes nothing (documented so in the OpenAPI document).
_REFUSALS: dict[int | str, dict[str, Any]] = {
    status_code: {"model": ErrorResponse} for status_code in (400, 401, 413, 422, 503)
}
# The Firecrawl webhook reads its headers itself (see `firecrawl_webhook`); they are documented so.
_FIRECRAWL_HEADERS = [
    {
        "name": SIGNATURE_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "sha256=<hex HMAC-SHA256 of the body with CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET>; "
        "a delivery without a valid one is refused (401)",
    },
    {
        "name": TIMESTAMP_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": MAX_TIMESTAMP_LENGTH},
        "description": _TIMESTAMP_DESCRIPTION,
    },
]


class _RequestOnlyRoute(APIRoute):
    """A route whose endpoint takes the request alone and answers with a response it made itself.

    FastAPI's request handler (reading a body parameter, solving parameters and dependencies, validating and
    serializing the returned model, each step in a telemetry operation of its own) has nothing to do for
    such an endpoint and still cost 5 % of a webhook's instructions, so it is not run: the endpoint is
    called with the request. Its exceptions still reach the app's handlers (FastAPI's `request_response`
    wraps this), and the OpenAPI document is built from the route's declaration as for any other.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request)
            return response

        return handle


async def firecrawl_webhook(request: Request) -> Response:
    # The busiest route reads its headers and services itself, and answers with its JSON made (`_accept`):
    # FastAPI solved every declared parameter and dependency on every request, about 0.03 ms each (an
    # eighth of a webhook's CPU), then validated the returned model again; see `_RequestOnlyRoute`.
    services = services_of(request)
    # The webhook limit is counted with the delivery's jobs when it brings pages (one round trip to Redis);
    # every other answer counts it on its own first, so a sender over its limit gets 429 either way.
    deferred = deferred_charge(request)
    delivery = await _read_delivery(request, services.settings)
    if deferred is not None and (isinstance(delivery, Response) or not delivery.pages):
        refusal = await deferred.charge_alone()
        if refusal is not None:
            return refusal
    if isinstance(delivery, Response):
        return delivery
    charge = deferred.charge if deferred is not None and not deferred.settled else None
    try:
        return await _accept(delivery, services, charge)
    except RateLimitedError as exc:
        assert deferred is not None  # only a charge is refused
        return deferred.refusal(exc.decision)
    except DependencyUnavailableError:
        WEBHOOKS_REJECTED.labels(SOURCE, "unavailable").inc()
        raise


router.add_api_route(
    "/firecrawl",
    firecrawl_webhook,
    methods=["POST"],
    route_class_override=_RequestOnlyRoute,
    response_model=WebhookResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"model": WebhookResponse, "description": "Lifecycle event or failed pages, recorded"},
        **_REFUSALS,
    },
    summary="Receive a Firecrawl webhook (crawl.page, batch_scrape.page, lifecycle events)",
    openapi_extra={**raw_body(FIRECRAWL_WEBHOOK_BODY), "parameters": _FIRECRAWL_HEADERS},
)


async def _read_delivery(request: Request, settings: Settings) -> FirecrawlDelivery | Response:
    """The delivery, signed and on time; else the problem to answer."""
    secret = settings.firecrawl_webhook_secret.get_secret_value() if settings.firecrawl_webhook_secret else ""
    if not secret:
        WEBHOOKS_REJECTED.labels(SOURCE, "not_configured").inc()
        return problem(
            503, "CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET is not configured; unsigned webhooks are refused"
        )
    body = await request.body()
    timestamp = request.headers.get(TIMESTAMP_HEADER)
    try:
        verify_signature(secret, body, request.headers.get(SIGNATURE_HEADER))
        if timestamp is not None and len(timestamp) > MAX_TIMESTAMP_LENGTH:
            raise WebhookRejectedError(
                422, f"header {TIMESTAMP_HEADER} is longer than {MAX_TIMESTAMP_LENGTH} characters"
            )
        check_delivery_time(timestamp, window_seconds=settings.webhook_replay_window_seconds)
        return parse_delivery(body)
    except StaleDeliveryError as exc:
        WEBHOOKS_REJECTED.labels(SOURCE, "stale").inc()
        return problem(exc.status_code, exc.reason)
    except WebhookRejectedError as exc:
        WEBHOOKS_REJECTED.labels(SOURCE, "signature" if exc.status_code == 401 else "payload").inc()
        return problem(exc.status_code, exc.reason)


async def _accept(delivery: FirecrawlDelivery, services: Services, charge: RateCharge | None) -> Response:
    enqueued = await services.queue.enqueue_pages(
        delivery.pages,
        delivery_id=delivery.webhook_id,
        meta={"crawl_id": delivery.crawl_id, "webhook_id": delivery.webhook_id, "source": "firecrawl"},
        charge=charge,
    )
    job_ids = [job.job_id for job in enqueued]
    deduplicated = sum(job.deduplicated for job in enqueued)
    # Written behind the answer; each index job records its page when it ends, whatever becomes of this.
    await services.received_pages.record(delivery.crawl_id, list(zip(delivery.pages, job_ids, strict=True)))
    change_event_ids: list[int] = []
    for change in delivery.monitor_changes:
        event, job_id, _ = await open_change(
            services.change_events,
            services.queue,
            source="firecrawl-monitor",
            url=change.url,
            canonical_url=canonicalize_url(change.url),
            watch_uuid=None,
            detected_at=None,
            removed=change.status == "removed",
        )
        change_event_ids.append(event.id)
        if job_id:
            job_ids.append(job_id)
    # crawl.completed / batch_scrape.completed: read the results back, for pages whose webhook was lost.
    # Queued before the event is recorded: it needs Redis only, and is the crawl's safety net when
    # PostgreSQL is what failed.
    reconciliation = None
    if completion_kind(delivery.event_type) is not None:
        await services.received_pages.flush()  # the pages this replica received are known to it first
        reconciliation = await asyncio.to_thread(
            schedule_on_completion, services.queue, services.settings, delivery.event_type, delivery.crawl_id
        )
    if delivery.failed or not delivery.is_page_event:
        try:
            await services.crawl_events.record(
                crawl_id=delivery.crawl_id,
                event_type=delivery.event_type,
                webhook_id=delivery.webhook_id,
                success=delivery.success and not delivery.failed,
                failures=[(f.url, f.error) for f in delivery.failed],
                error=delivery.error,
            )
        except DependencyUnavailableError:
            if not job_ids and reconciliation is None:
                raise  # nothing else of this delivery was kept: 503, so the sender knows
            # The pages or the reconciliation are queued; only the event's bookkeeping is lost. Say so, loudly.
            log.exception("could not record %s of Firecrawl crawl %s", delivery.event_type, delivery.crawl_id)
    status_code, result_status = status.HTTP_202_ACCEPTED, "queued"
    if not job_ids:
        status_code = status.HTTP_200_OK
        result_status = "recorded" if delivery.is_page_event else "acknowledged"
    series(WEBHOOKS_RECEIVED, SOURCE, event_label(delivery.event_type)).inc()
    answer = WebhookResponse(
        status=result_status,
        event=delivery.event_type,
        crawl_id=delivery.crawl_id,
        queued_jobs=len(job_ids),
        job_ids=job_ids,
        deduplicated_jobs=deduplicated,
        failed_documents=[FailedDocument(url=f.url, error=f.error) for f in delivery.failed],
        change_event_ids=change_event_ids,
        reconcile_job_id=reconciliation.job_id if reconciliation is not None else None,
    )
    return Response(
        answer.model_dump_json(),
        status_code=status_code,
        media_type="application/json",
    )


@router.post(
    "/changedetection",
    response_model=ChangeWebhookResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_REFUSALS,
    summary="Receive a changedetection.io notification (post:// JSON template or json:// envelope)",
    openapi_extra=raw_body(CHANGEDETECTION_WEBHOOK_BODY, text=True),
)
async def changedetection_webhook(
    request: Request,
    services: ServicesDep,
    settings: SettingsDep,
    token_header: Annotated[str | None, Header(alias=CHANGEDETECTION_TOKEN_HEADER)] = None,
    timestamp: TimestampHeader = None,
    token: Annotated[
        str | None, Query(max_length=512, description="The shared secret, if not in the header")
    ] = None,
    format: Annotated[
        str | None, Query(max_length=16, description="Appended by changedetection.io's post://")
    ] = None,
) -> ChangeWebhookResponse | Response:
    expected = settings.changedetection_token.get_secret_value() if settings.changedetection_token else ""
    if not expected:
        WEBHOOKS_REJECTED.labels(CHANGEDETECTION, "not_configured").inc()
        return problem(503, "CRAWLDEX_CHANGEDETECTION_TOKEN is not configured; notifications are refused")
    provided = token_header or token or ""
    if not hmac.compare_digest(provided.encode(), expected.encode()):
        WEBHOOKS_REJECTED.labels(CHANGEDETECTION, "signature").inc()
        return problem(401, f"missing or wrong {CHANGEDETECTION_TOKEN_HEADER} header (or token parameter)")
    try:
        check_delivery_time(timestamp, window_seconds=settings.webhook_replay_window_seconds)
        notification = parse_notification(await request.body())
    except StaleDeliveryError as exc:
        WEBHOOKS_REJECTED.labels(CHANGEDETECTION, "stale").inc()
        return problem(exc.status_code, exc.reason)
    except WebhookRejectedError as exc:
        WEBHOOKS_REJECTED.labels(CHANGEDETECTION, "payload").inc()
        return problem(exc.status_code, exc.reason)
    try:
        event, job_id, joined = await open_change(
            services.change_events,
            services.queue,
            source=CHANGEDETECTION,
            url=notification.url,
            canonical_url=notification.canonical_url,
            watch_uuid=notification.watch_uuid,
            detected_at=notification.detected_at,
            removed=False,
        )
    except DependencyUnavailableError:
        WEBHOOKS_REJECTED.labels(CHANGEDETECTION, "unavailable").inc()
        raise
    WEBHOOKS_RECEIVED.labels(CHANGEDETECTION, "change").inc()
    return ChangeWebhookResponse(
        status="coalesced" if joined else "queued",
        change_event_id=event.id,
        job_id=job_id,
        url=event.url,
        watch_uuid=event.watch_uuid,
    )
