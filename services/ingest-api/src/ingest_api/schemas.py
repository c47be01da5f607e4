"""Request and response bodies of the HTTP API (the wire contract; the core has its own models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crawldex.models import IndexStatus, PageDocument
from crawldex.urls import canonicalize_url


class IndexRequest(BaseModel):
    """A page to index. Unknown fields (e.g. the seed API's html, statusCode) are ignored."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1, max_length=8192)
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
