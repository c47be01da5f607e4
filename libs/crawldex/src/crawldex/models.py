"""The domain model shared by the API, the queue and the workers."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from crawldex.urls import canonicalize_url

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class PageDocument(BaseModel):
    """A page to index: what a webhook, the index API or a rescrape delivers.

    Unknown fields are ignored: during a rollout a newer ingest-api may queue fields an older
    worker does not know yet.
    """

    model_config = ConfigDict(extra="ignore")

    url: NonBlank = Field(max_length=8192, description="The page's URL (its final URL after redirects).")
    markdown: str = Field(description="The page content as markdown.")
    title: str | None = Field(default=None, max_length=4096)
    description: str | None = Field(default=None, max_length=16384)
    language: str | None = Field(default=None, max_length=64)
    crawl_id: str | None = Field(default=None, max_length=256)
    source: str = Field(default="api", max_length=64, description="Where the page came from.")
    received_at: datetime = Field(default_factory=utc_now)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        canonicalize_url(value)  # raises InvalidDocumentError (a ValueError for pydantic) when bad
        return value


class IndexStatus(enum.StrEnum):
    INDEXED = "indexed"
    UNCHANGED = "unchanged"
    EMPTY = "empty"
    SUPERSEDED = "superseded"


class IndexOutcome(BaseModel):
    url: str
    canonical_url: str
    doc_id: str
    status: IndexStatus
    chunk_count: int
    content_hash: str
    # The stage timings of the batch the page was indexed in, and how many pages that batch had.
    timings_ms: dict[str, float]
    batch_pages: int = 1

    def as_job_result(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
