"""What every page fetcher returns (the Firecrawl scrape API, the built-in fetcher)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

GONE_STATUSES = frozenset({404, 410})


@dataclass(frozen=True)
class FetchedPage:
    requested_url: str
    url: str  # the final URL, after redirects
    status_code: int  # the page's own HTTP status (Firecrawl: data.metadata.statusCode)
    markdown: str
    title: str | None = None
    description: str | None = None
    language: str | None = None

    @property
    def gone(self) -> bool:
        """The page answered 404 or 410: it no longer exists, and its chunks must leave the index."""
        return self.status_code in GONE_STATUSES


class FetchError(Exception):
    """The page could not be fetched. ``retryable``: trying again later may succeed (timeouts, 429, 5xx)."""

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


class BlockedAddressError(FetchError):
    """The URL resolves to an address the fetcher must not reach (SSRF guard)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class PageFetcher(Protocol):
    async def fetch(self, url: str) -> FetchedPage:
        """Fetch ``url`` as markdown; a 404/410 page is returned (``gone``), other failures raise FetchError."""
        ...

    async def aclose(self) -> None: ...
