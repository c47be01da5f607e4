"""Request and response bodies of the HTTP API (the wire contract; the core has its own models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crawldex.models import IndexStatus, PageDocument
from crawldex.urls import canonicalize_url


class IndexRequest(BaseModel):
    """A page to index. Unknown fields (e.g. the seed API's html, statusCode) are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://docs.example.com/guides/autoscaling",
                    "markdown": "# Autoscaling\n\nKEDA scales index workers on the length of the queue.",
                    "title": "Autoscaling index workers",
                    "language": "en",
                }
            ]
        },
    )

    url: str = Field(min_length=1, max_length=8192, description="An http(s) URL: the page's identity")
    markdown: str = Field(min_length=1, description="Page content as markdown; must not be empty.")
    title: str | None = Field(default=None, max_length=4096)
    description: str | None = Field(default=None, max_length=16384)
    language: str | None = Field(default=None, max_length=64)
    crawl_id: str | None = Field(default=None, max_length=256)

    @field_validator("url")
    @classmethod
    def _indexable_url(cls, value: str) -> str:
        canonicalize_url(value)  # InvalidDocumentError is a ValueError: a 422 naming the problem
        return value

    @field_validator("markdown")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("markdown must not be blank")
        return value

    def to_page(self) -> PageDocument:
        return PageDocument(
            url=self.url,
            markdown=self.markdown,
            title=self.title,
            description=self.description,
            language=self.language,
            crawl_id=self.crawl_id,
            source="api",
        )


class QueuedResponse(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"
    url: str
    deduplicated: bool = Field(description="An identical job was already pending; no second job was made.")


class FailedDocument(BaseModel):
    url: str | None
    error: str


class WebhookResponse(BaseModel):
    status: Literal["queued", "acknowledged", "recorded"]
    event: str
    crawl_id: str | None
    queued_jobs: int = 0
    job_ids: list[str] = Field(default_factory=list)
    deduplicated_jobs: int = 0
    failed_documents: list[FailedDocument] = Field(default_factory=list)
    change_event_ids: list[int] = Field(
        default_factory=list, description="monitor.page: the change events opened"
    )
    reconcile_job_id: str | None = Field(
        default=None,
        description="crawl.completed / batch_scrape.completed: the reconciliation job queued "
        "(only with CRAWLDEX_FIRECRAWL_URL set; otherwise reconciliation is off)",
    )


class TestIndexStep(BaseModel):
    step: str
    duration_ms: float


class TestIndexResponse(BaseModel):
    status: IndexStatus
    url: str
    doc_id: str
    chunk_count: int
    timings_ms: dict[str, float] = Field(description="clean, chunk, embed, keyword, upsert, record, total")
    steps: list[TestIndexStep]


class JobResponse(BaseModel):
    job_id: str
    queue: str
    status: str = Field(
        description="queued, started, deferred, scheduled, finished, failed, stopped, canceled"
    )
    enqueued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    result: Any = None
    error: str | None = None
    retries_left: int | None = None
    worker: str | None = Field(default=None, description="The worker that ran (or runs) it: host.pid.kind")


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded"]
    checks: dict[str, str]


class ErrorResponse(BaseModel):
    detail: Any


class OperationRow(BaseModel):
    id: int
    timestamp: datetime
    operation_type: str
    operation_name: str
    duration_ms: float
    success: bool
    error: str | None
    document_url: str | None
    job_id: str | None
    crawl_id: str | None


class OperationSummaryRow(BaseModel):
    operation_type: str
    operation_name: str
    count: int
    failures: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    max_ms: float


class OperationsResponse(BaseModel):
    hours: float
    total: int = Field(description="Rows matching the filters (all pages)")
    limit: int
    offset: int
    summary: list[OperationSummaryRow] = Field(
        description="Per operation type and name, over all matching rows"
    )
    metrics: list[OperationRow]


class ChangeWebhookResponse(BaseModel):
    status: Literal["queued", "coalesced"] = Field(
        description="coalesced: a not-yet-fetched event for the same watch exists; this notification joined it"
    )
    change_event_id: int
    job_id: str | None
    url: str
    watch_uuid: str | None


class ChangeEventResponse(BaseModel):
    id: int
    source: str
    watch_uuid: str | None
    url: str
    detected_at: datetime | None
    received_at: datetime
    status: str = Field(description="queued, fetching, indexing, indexed, unchanged, gone, failed")
    attempts: int
    notifications: int
    rescrape_job_id: str | None
    index_job_id: str | None
    error: str | None
    indexed_at: datetime | None
    updated_at: datetime


class ChangeEventsPage(BaseModel):
    total: int
    limit: int
    offset: int
    events: list[ChangeEventResponse]


class ReconciliationRunResponse(BaseModel):
    job_id: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: Literal["running", "succeeded", "incomplete", "failed"] = Field(
        description="succeeded: every result was read and the crawl had ended at Firecrawl; incomplete: the "
        "crawl still ran there (run it again once it ends); failed: see error"
    )
    firecrawl_status: str | None = Field(
        description="What Firecrawl said of the crawl: scraping, completed, ..."
    )
    firecrawl_total: int | None = Field(description="Pages Firecrawl counts in the crawl")
    pages_listed: int = Field(description="Documents in Firecrawl's results")
    pages_known: int = Field(description="... whose page had arrived already (or been recovered before)")
    pages_recovered: int = Field(description="... queued for indexing by this run")
    pages_failed: int = Field(description="... failed pages nobody had reported, recorded as failed")
    error: str | None


class CrawlResponse(BaseModel):
    crawl_id: str
    kind: Literal["crawl", "batch_scrape"]
    status: Literal["running", "completed", "cancelled", "failed"] = Field(
        description="From the crawl's lifecycle webhooks (the latest one), else from the last reconciliation"
    )
    pages_received: int = Field(
        description="Pages that arrived by webhook (or /api/index with this crawl_id), failed ones included"
    )
    pages_recovered: int = Field(description="Pages no webhook brought, found and queued by reconciliation")
    pages_indexed: int = Field(description="Pages whose index job finished (indexed, unchanged, empty)")
    pages_failed: int = Field(
        description="Pages Firecrawl reported failed (success false, HTTP status >= 400, no content) "
        "and pages whose index job failed for good"
    )
    pages_pending: int = Field(description="Pages queued for indexing whose job has not ended")
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    reconciliation_enabled: bool = Field(description="CRAWLDEX_FIRECRAWL_URL is set")
    reconciliations: int = Field(description="Reconciliation runs so far")
    last_reconciliation: ReconciliationRunResponse | None


class ReconcileQueuedResponse(BaseModel):
    status: Literal["queued", "already_queued"] = Field(
        description="already_queued: a reconciliation of this crawl waits or runs; no second one was made"
    )
    crawl_id: str
    kind: Literal["crawl", "batch_scrape"]
    job_id: str


# The webhooks read their raw body (Firecrawl signs the exact bytes; changedetection.io sends a template or
# Apprise's envelope), so no model parses it; these describe it in the OpenAPI document. The parsers are
# lenient where the senders are (other fields are ignored), and refuse a body they cannot read with 400/422.
_TEXT_OR_LIST = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    "description": "A string, or a list of strings (the first non-empty one is used)",
}
FIRECRAWL_WEBHOOK_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {
            "type": "string",
            "minLength": 1,
            "description": "crawl.page and batch_scrape.page carry pages; monitor.page carries changes; "
            "crawl.started, crawl.completed, batch_scrape.completed, ... are acknowledged",
        },
        "success": {"type": "boolean", "description": "false: every page of the delivery failed"},
        "id": {"type": "string", "description": "The crawl or batch scrape id (v1, v2)"},
        "jobId": {"type": "string", "description": "The crawl id (v0)"},
        "webhookId": {"type": "string", "description": "The delivery's id; a replay queues no new job"},
        "error": {"description": "Why the delivery's pages failed (a string, or any JSON value)"},
        "data": {
            "type": "array",
            "description": "Page events: Firecrawl documents; monitor.page: {url, status}",
            "items": {
                "type": "object",
                "properties": {
                    "markdown": {"type": "string"},
                    "content": {"type": "string", "description": "v0's markdown"},
                    "url": {"type": "string", "description": "monitor.page: the watched page"},
                    "status": {"type": "string", "description": "monitor.page: changed, removed, same, new"},
                    "metadata": {
                        "type": "object",
                        "properties": {
                            "url": _TEXT_OR_LIST,
                            "sourceURL": _TEXT_OR_LIST,
                            "statusCode": {"type": "integer"},
                            "title": _TEXT_OR_LIST,
                            "description": _TEXT_OR_LIST,
                            "language": _TEXT_OR_LIST,
                            "error": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "metadata": {"type": "object", "description": "The metadata the crawl was started with, echoed"},
    },
    "examples": [
        {
            "success": True,
            "type": "crawl.page",
            "id": "0d9f3c1e-5b7a-4c1d-9e2f-8a6b4c3d2e1f",
            "webhookId": "7b1e2c3d-4f5a-4b6c-8d9e-0f1a2b3c4d5e",
            "data": [
                {
                    "markdown": "# Autoscaling\n\nKEDA scales index workers on the length of the queue.",
                    "metadata": {
                        "url": "https://docs.example.com/guides/autoscaling/",
                        "sourceURL": "https://docs.example.com/guides/autoscaling",
                        "title": "Autoscaling index workers",
                        "statusCode": 200,
                    },
                }
            ],
        }
    ],
}
CHANGEDETECTION_WEBHOOK_BODY: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "title": "post:// body template",
            "properties": {
                "watch_url": {"type": "string", "description": "Or url: the watched page (required)"},
                "url": {"type": "string"},
                "watch_uuid": {"type": "string", "description": "Or uuid: the watch"},
                "uuid": {"type": "string"},
                "watch_title": {"type": "string", "description": "Or title"},
                "title": {"type": "string"},
                "diff_url": {"type": "string", "description": "The watch uuid is read from it if not given"},
            },
        },
        {
            "type": "object",
            "title": "json:// (Apprise) envelope",
            "required": ["message"],
            "properties": {
                "version": {"type": "string"},
                "type": {"type": "string"},
                "title": {"type": "string"},
                "message": {
                    "type": "string",
                    "description": "The body template as JSON, or text naming the watched URL",
                },
                "attachments": {"type": "array"},
            },
        },
    ],
    "examples": [
        {
            "url": "https://docs.example.com/pricing",
            "uuid": "1f0e2d3c-4b5a-4968-8778-695a4b3c2d1e",
            "title": "Pricing",
            "diff_url": "https://changes.example.com/diff/1f0e2d3c-4b5a-4968-8778-695a4b3c2d1e",
        }
    ],
}


def raw_body(schema: dict[str, Any], *, text: bool = False) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its body itself: the body it expects, for the OpenAPI document."""
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if text:
        content["text/plain"] = {"schema": {"type": "string", "description": "A text notification"}}
    return {"requestBody": {"required": True, "content": content}}
