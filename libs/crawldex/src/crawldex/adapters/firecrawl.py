"""Firecrawl's API: the scrape API (``POST /v2/scrape``) as a page fetcher, and the results of a crawl or
batch scrape (``GET /v2/crawl/{id}``, ``GET /v2/batch/scrape/{id}``) for reconciliation.

Each fetch asks for a fresh scrape (``maxAge: 0``: v2 otherwise serves a cached copy up to two days old)
of the page's main content as markdown. An HTTP 200 from Firecrawl is not yet a good page: the page's
own status is ``data.metadata.statusCode``, and a page that answered 404/410 comes back as a gone page.

Firecrawl errors carry ``{"success": false, "error": "...", "code"?: "..."}``. 429 (rate limit; the
wait is given only in the message text, "... retry after 42s ...", or a ``Retry-After`` header where a
proxy adds one) and 500/502/503/504 and transport failures are retried here with exponential backoff
and jitter; 408 (Firecrawl's own scrape timeout) is left to the job layer's retries, as it already took
a whole scrape timeout; 400/401/402/403 are final.

A crawl's results come in pages of at most about 10 MB: ``{"success", "status": "scraping" | "completed" |
"cancelled", "total", "completed", "creditsUsed", "expiresAt", "next"?, "data": [document, ...]}``, where
``next`` is the URL of the following page while there is one. Firecrawl builds that URL from the request's
``Host`` header (and ``https`` unless it runs with ``ENV=local``), so behind a proxy or inside a cluster it
may name a host or scheme crawldex cannot or must not reach. ``next`` is therefore never fetched as given:
only its ``skip`` is taken, after checking that it names this crawl's results, and the request goes to the
configured Firecrawl URL. While a crawl runs, Firecrawl keeps handing out a ``next`` whose ``skip`` does not
move past the results it has; the listing stops there instead of asking forever. Results of crawls older
than Firecrawl's retention (24 hours by default) answer 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, Literal, Self, TypeVar

import httpx

from crawldex.adapters.fetching import GONE_STATUSES, FetchedPage, FetchError
from crawldex.adapters.http_retry import parse_retry_after
from crawldex.config import Settings
from crawldex.errors import ConfigurationError, CrawldexError

__all__ = [
    "CRAWL_RESULTS_PATHS",
    "DEFAULT_MAX_RETRIES",
    "MAX_RETRY_AFTER_SECONDS",
    "SCRAPE_PATH",
    "CrawlKind",
    "CrawlResults",
    "CrawlResultsError",
    "CrawlResultsPage",
    "FirecrawlScraper",
    "InvalidCrawlIdError",
    "SleepFunction",
    "checked_crawl_id",
    "retry_after_seconds",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
SleepFunction = Callable[[float], Awaitable[None]]
"""Waits the given number of seconds; ``asyncio.sleep`` outside tests."""

SCRAPE_PATH: Final = "/v2/scrape"
# Retried here, with backoff; every other error status is returned to the caller at once.
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
DEFAULT_MAX_RETRIES: Final = 3
DEFAULT_BACKOFF_BASE_SECONDS: Final = 1.0
DEFAULT_BACKOFF_MAX_SECONDS: Final = 30.0
# A longer wait asked for by a 429 is clamped: the rescrape job has a deadline of its own.
MAX_RETRY_AFTER_SECONDS: Final = 30.0
# The HTTP client waits this much longer than the scrape timeout Firecrawl is given, so that
# Firecrawl's own 408 arrives rather than a client timeout.
CLIENT_TIMEOUT_MARGIN_SECONDS: Final = 10.0
CrawlKind = Literal["crawl", "batch_scrape"]
CRAWL_RESULTS_PATHS: Final[dict[str, str]] = {"crawl": "/v2/crawl", "batch_scrape": "/v2/batch/scrape"}
RESULTS_TIMEOUT_SECONDS: Final = 60.0
# One page holds about 10 MB of documents (more when a single document is larger); anything far beyond that
# is not a Firecrawl answer, and is refused rather than read into memory.
MAX_RESULTS_PAGE_BYTES: Final = 64 * 1024 * 1024
# A listing stops after this many pages even if Firecrawl offers more (a guard against a cursor that loops).
MAX_RESULTS_PAGES: Final = 10_000
# Firecrawl's ids are UUIDs. The id goes into a URL path and into job ids, so nothing else is accepted.
_CRAWL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_RETRY_AFTER_IN_MESSAGE = re.compile(r"retry after (\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_EXCERPT_CHARS: Final = 300


@dataclass(frozen=True)
class _Failure:
    """One failed attempt: an error answer, or none at all (``status_code`` None)."""

    message: str
    status_code: int | None
    retryable: bool
    retry_here: bool = False
    retry_after: float | None = None


class InvalidCrawlIdError(CrawldexError, ValueError):
    """Not a Firecrawl crawl or batch scrape id (letters, digits, ``-`` and ``_``, at most 128)."""


def checked_crawl_id(crawl_id: str) -> str:
    """``crawl_id`` if it can be a Firecrawl id, else `InvalidCrawlIdError`."""
    if not isinstance(crawl_id, str) or not _CRAWL_ID.fullmatch(crawl_id):
        raise InvalidCrawlIdError(
            f"{crawl_id!r} is not a Firecrawl crawl id (letters, digits, '-' and '_', at most 128)"
        )
    return crawl_id


class CrawlResultsError(CrawldexError):
    """Firecrawl's results of a crawl could not be read. ``retryable``: trying again later may succeed."""

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


@dataclass(frozen=True)
class CrawlResultsPage:
    """One page of a crawl's results, as Firecrawl answered it."""

    status: str  # Firecrawl's: scraping, completed, cancelled (failed on older servers)
    total: int | None
    completed: int | None
    credits_used: int | None
    expires_at: datetime | None
    documents: list[Any]  # Firecrawl documents {markdown, metadata: {sourceURL, url, statusCode, ...}}
    skip: int
    next_skip: int | None  # where the following page starts, while Firecrawl says there is one

    @property
    def more(self) -> bool:
        return self.next_skip is not None


@dataclass(frozen=True)
class CrawlResults:
    """Every page of a crawl's results that Firecrawl handed out."""

    crawl_id: str
    kind: str
    status: str
    total: int | None
    completed: int | None
    credits_used: int | None
    expires_at: datetime | None
    documents: list[Any]
    pages: int
    # False when the listing stopped before Firecrawl's end: the crawl still runs (its cursor does not move
    # on), or the page limit was reached. Reading again later may find more.
    complete: bool


class FirecrawlScraper:
    """`crawldex.adapters.fetching.PageFetcher` over a Firecrawl server (cloud or self-hosted)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_ms: int = 30000,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: SleepFunction = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        backoff_base_seconds: float = DEFAULT_BACKOFF_BASE_SECONDS,
        backoff_max_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS,
    ) -> None:
        """``jitter`` returns a number in [0, 1) that spreads each backoff delay over 0.5x to 1.5x of
        its nominal value. Self-hosted Firecrawl without authentication needs no ``api_key``.
        """
        if not base_url:
            raise ConfigurationError("FirecrawlScraper needs CRAWLDEX_FIRECRAWL_URL")
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_ms / 1000 + CLIENT_TIMEOUT_MARGIN_SECONDS),
            transport=transport,
        )
        self._timeout_ms = timeout_ms
        self._max_retries = max_retries
        self._sleep = sleep
        self._jitter = jitter
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: SleepFunction = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> FirecrawlScraper:
        if settings.firecrawl_url is None:
            raise ConfigurationError("FirecrawlScraper needs CRAWLDEX_FIRECRAWL_URL")
        api_key = settings.firecrawl_api_key.get_secret_value() if settings.firecrawl_api_key else None
        return cls(
            settings.firecrawl_url,
            api_key=api_key,
            timeout_ms=settings.firecrawl_timeout_ms,
            transport=transport,
            sleep=sleep,
            jitter=jitter,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> FetchedPage:
        payload: dict[str, Any] = {
            "url": url,
            "formats": ["markdown"],
            "onlyMainContent": True,
            "timeout": self._timeout_ms,
            "maxAge": 0,
        }
        outcome = await self._with_retries(lambda: self._attempt(url, payload), f"Firecrawl scrape of {url}")
        if isinstance(outcome, httpx.Response):
            return _parse_scrape(url, outcome)
        raise FetchError(outcome.message, retryable=outcome.retryable, status_code=outcome.status_code)

    async def iter_crawl_results(
        self, crawl_id: str, kind: CrawlKind = "crawl"
    ) -> AsyncIterator[CrawlResultsPage]:
        """The pages of a crawl's (or batch scrape's) results, following ``next`` one page at a time.

        The last page yielded has ``more`` set when the listing stopped before Firecrawl's end (see
        `CrawlResults.complete`). Raises `CrawlResultsError` (after retrying 429, 5xx and network errors
        here) and `InvalidCrawlIdError`.
        """
        crawl_id = checked_crawl_id(crawl_id)
        if kind not in CRAWL_RESULTS_PATHS:
            raise ValueError(f"kind must be one of {sorted(CRAWL_RESULTS_PATHS)}, not {kind!r}")
        path = f"{CRAWL_RESULTS_PATHS[kind]}/{crawl_id}"
        skip = 0
        for _ in range(MAX_RESULTS_PAGES):
            what = f"Firecrawl {kind} results of {crawl_id} (skip={skip})"
            outcome = await self._with_retries(partial(self._get_results, path, skip, what), what)
            if isinstance(outcome, _Failure):
                raise CrawlResultsError(
                    outcome.message, retryable=outcome.retryable, status_code=outcome.status_code
                )
            page = _parse_results(outcome, what, path, skip)
            yield page
            if page.next_skip is None:
                return
            if page.next_skip <= skip:
                logger.info("%s: the cursor does not move on (status %s); stopping here", what, page.status)
                return
            skip = page.next_skip
        logger.warning(
            "Firecrawl %s results of %s: stopped after %d pages", kind, crawl_id, MAX_RESULTS_PAGES
        )

    async def get_crawl_results(self, crawl_id: str, kind: CrawlKind = "crawl") -> CrawlResults:
        """All of a crawl's results in memory (`iter_crawl_results` reads them page by page)."""
        documents: list[Any] = []
        last: CrawlResultsPage | None = None
        pages = 0
        async for page in self.iter_crawl_results(crawl_id, kind):
            documents.extend(page.documents)
            last = page
            pages += 1
        assert last is not None  # the first page either arrives or raises
        return CrawlResults(
            crawl_id=crawl_id,
            kind=kind,
            status=last.status,
            total=last.total,
            completed=last.completed,
            credits_used=last.credits_used,
            expires_at=last.expires_at,
            documents=documents,
            pages=pages,
            complete=not last.more,
        )

    # Internals.

    async def _get_results(self, path: str, skip: int, what: str) -> httpx.Response | _Failure:
        """One GET of a results page, its body read up to `MAX_RESULTS_PAGE_BYTES`."""
        params = {"skip": str(skip)} if skip else None
        try:
            async with self._client.stream(
                "GET", path, params=params, timeout=RESULTS_TIMEOUT_SECONDS
            ) as streamed:
                declared = streamed.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > MAX_RESULTS_PAGE_BYTES:
                    return _too_large(what, int(declared))
                chunks: list[bytes] = []
                size = 0
                async for chunk in streamed.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESULTS_PAGE_BYTES:
                        return _too_large(what, size)
                    chunks.append(chunk)
        except httpx.TransportError as exc:
            return _Failure(
                f"{what} failed: {_describe_exception(exc)}", None, retryable=True, retry_here=True
            )
        except httpx.HTTPError as exc:
            return _Failure(f"{what} failed: {_describe_exception(exc)}", None, retryable=False)
        # The body is decoded already: the copy must not claim an encoding.
        headers = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() != "content-encoding"]
        response = httpx.Response(
            streamed.status_code, headers=headers, content=b"".join(chunks), request=streamed.request
        )
        status = response.status_code
        if response.is_success:
            return response
        detail = _describe_error(response)
        if status == 404:
            return _Failure(
                f"{what}: Firecrawl has no such job ({detail}); a wrong id, or results past Firecrawl's "
                "retention (24 hours by default)",
                status,
                retryable=False,
            )
        if status == 400:
            return _Failure(f"{what}: Firecrawl refused the request: {detail}", status, retryable=False)
        if status in (401, 403):
            return _Failure(
                f"{what}: Firecrawl refused the API key (bad API key?): {detail}", status, retryable=False
            )
        if status == 402:
            return _Failure(f"{what}: Firecrawl payment required: {detail}", status, retryable=False)
        if status == 429:
            return _Failure(
                f"{what}: Firecrawl rate limit: {detail}",
                status,
                retryable=True,
                retry_here=True,
                retry_after=_rate_limit_wait(response),
            )
        if status == 408 or status in RETRY_STATUSES:
            return _Failure(f"{what}: Firecrawl failed: {detail}", status, retryable=True, retry_here=True)
        if status >= 500:
            return _Failure(f"{what}: Firecrawl failed: {detail}", status, retryable=True)
        return _Failure(f"{what}: Firecrawl answered {detail}", status, retryable=False)

    async def _with_retries(
        self, attempt: Callable[[], Awaitable[_T | _Failure]], what: str
    ) -> _T | _Failure:
        """The first success, or the failure that ends the tries (its message says how many were made)."""
        tries = 0
        while True:
            outcome = await attempt()
            if not isinstance(outcome, _Failure):
                return outcome
            if not outcome.retry_here or tries >= self._max_retries:
                if tries:
                    return replace(outcome, message=f"{outcome.message} (gave up after {tries + 1} attempts)")
                return outcome
            delay = self._retry_delay(tries, outcome.retry_after)
            tries += 1
            logger.warning(
                "%s: %s; retry %d/%d in %.2fs", what, outcome.message, tries, self._max_retries, delay
            )
            await self._sleep(delay)

    async def _attempt(self, url: str, payload: dict[str, Any]) -> httpx.Response | _Failure:
        try:
            response = await self._client.post(SCRAPE_PATH, json=payload)
        except httpx.TransportError as exc:  # connection refused or reset, timeouts, ...
            return _Failure(
                f"Firecrawl scrape of {url} failed: {_describe_exception(exc)}",
                None,
                retryable=True,
                retry_here=True,
            )
        except httpx.HTTPError as exc:
            return _Failure(
                f"Firecrawl scrape of {url} failed: {_describe_exception(exc)}", None, retryable=False
            )
        status = response.status_code
        if response.is_success:
            return response
        detail = _describe_error(response)
        if status == 400:
            return _Failure(f"Firecrawl refused the request for {url}: {detail}", status, retryable=False)
        if status in (401, 403):
            return _Failure(
                f"Firecrawl refused the API key (bad API key?): {detail}", status, retryable=False
            )
        if status == 402:
            return _Failure(f"Firecrawl payment required: {detail}", status, retryable=False)
        if status == 408:
            return _Failure(f"Firecrawl timed out scraping {url}: {detail}", status, retryable=True)
        if status == 429:
            return _Failure(
                f"Firecrawl rate limit: {detail}",
                status,
                retryable=True,
                retry_here=True,
                retry_after=_rate_limit_wait(response),
            )
        if status in RETRY_STATUSES:
            return _Failure(
                f"Firecrawl failed scraping {url}: {detail}", status, retryable=True, retry_here=True
            )
        if status >= 500:
            return _Failure(f"Firecrawl failed scraping {url}: {detail}", status, retryable=True)
        return _Failure(f"Firecrawl answered the scrape of {url} with {detail}", status, retryable=False)

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        nominal = min(self._backoff_max, self._backoff_base * 2.0**attempt)
        return nominal * (0.5 + self._jitter())


def _too_large(what: str, size: int) -> _Failure:
    return _Failure(
        f"{what}: the answer is larger than {MAX_RESULTS_PAGE_BYTES} bytes ({size}); not a Firecrawl results page",
        None,
        retryable=False,
    )


def _parse_results(response: httpx.Response, what: str, path: str, skip: int) -> CrawlResultsPage:
    """Read one results page; ``next`` only for the ``skip`` of the same crawl's results (see the module)."""
    try:
        body = response.json()
    except ValueError as exc:
        raise CrawlResultsError(
            f"{what}: the answer is not JSON: {_excerpt(response.text)!r}", retryable=True
        ) from exc
    if not isinstance(body, Mapping):
        raise CrawlResultsError(
            f"{what}: the answer is {type(body).__name__}, not a JSON object", retryable=True
        )
    if body.get("success") is False:
        error = _text(body.get("error")) or "no error given"
        raise CrawlResultsError(f"{what}: Firecrawl answered success false: {error}", retryable=True)
    data = body.get("data")
    if data is None:
        data = []
    if not isinstance(data, list):
        raise CrawlResultsError(f"{what}: 'data' is {type(data).__name__}, not an array", retryable=False)
    return CrawlResultsPage(
        status=_text(body.get("status")) or "unknown",
        total=_count(body.get("total")),
        completed=_count(body.get("completed")),
        credits_used=_count(body.get("creditsUsed")),
        expires_at=_timestamp(body.get("expiresAt")),
        documents=data,
        skip=skip,
        next_skip=_next_skip(body.get("next"), what, path),
    )


def _next_skip(value: object, what: str, path: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise CrawlResultsError(f"{what}: 'next' is {type(value).__name__}, not a URL", retryable=False)
    try:
        link = httpx.URL(value.strip())
    except httpx.InvalidURL as exc:
        raise CrawlResultsError(f"{what}: 'next' is not a URL: {_excerpt(value)!r}", retryable=False) from exc
    skips = link.params.get_list("skip")
    if link.path.rstrip("/") != path or len(skips) != 1 or not skips[0].isdigit():
        raise CrawlResultsError(
            f"{what}: refusing to follow 'next' {_excerpt(value)!r}: it is not the next page of {path}",
            retryable=False,
        )
    return int(skips[0])


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _parse_scrape(url: str, response: httpx.Response) -> FetchedPage:
    """Read ``{"success": true, "data": {"markdown", "metadata"}}`` into a page, or raise `FetchError`."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError as exc:
        raise FetchError(
            f"Firecrawl answered the scrape of {url} with a body that is not JSON: {_excerpt(response.text)!r}",
            retryable=True,
            status_code=status,
        ) from exc
    if not isinstance(body, Mapping):
        raise FetchError(
            f"Firecrawl answered the scrape of {url} with {type(body).__name__}, expected a JSON object",
            retryable=True,
            status_code=status,
        )
    if body.get("success") is not True:
        error = _text(body.get("error")) or "no error given"
        raise FetchError(f"Firecrawl could not scrape {url}: {error}", retryable=True, status_code=status)
    data = body.get("data")
    if not isinstance(data, Mapping):
        raise FetchError(f"Firecrawl's scrape of {url} has no data", retryable=False, status_code=status)
    raw_metadata = data.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
    page_status = _status_code(metadata.get("statusCode")) or 200
    final_url = _text(metadata.get("url")) or _text(metadata.get("sourceURL")) or url
    markdown = data.get("markdown")
    if page_status in GONE_STATUSES:
        return FetchedPage(
            requested_url=url,
            url=final_url,
            status_code=page_status,
            markdown=markdown if isinstance(markdown, str) else "",
        )
    if page_status >= 400:
        page_error = _text(metadata.get("error"))
        raise FetchError(
            f"{final_url} answered HTTP {page_status} to Firecrawl"
            + (f": {page_error}" if page_error else ""),
            retryable=page_status in (408, 429) or page_status >= 500,
            status_code=page_status,
        )
    if not isinstance(markdown, str):
        raise FetchError(
            f"Firecrawl's scrape of {url} has no markdown", retryable=False, status_code=page_status
        )
    return FetchedPage(
        requested_url=url,
        url=final_url,
        status_code=page_status,
        markdown=markdown,
        title=_text(metadata.get("title")),
        description=_text(metadata.get("description")),
        language=_text(metadata.get("language")),
    )


def _text(value: object) -> str | None:
    """A metadata value (a string, or a list of strings for repeated tags): its first non-empty string."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, str) and item.strip():
            return item.strip()
    return None


def _status_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _error_body(response: httpx.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, Mapping) else None


def _describe_error(response: httpx.Response) -> str:
    """``HTTP 402: <Firecrawl's error>`` (with its ``code`` and ``details``), or an excerpt of the body."""
    head = f"HTTP {response.status_code}"
    body = _error_body(response)
    if body is None or "error" not in body:
        text = _excerpt(response.text)
        return f"{head}: {text}" if text else head
    code = _text(body.get("code"))
    parts = [head, f" {code}" if code else "", f": {body.get('error')}"]
    details = body.get("details")
    if details:
        parts.append(f" {_excerpt(json.dumps(details, ensure_ascii=False))}")
    return "".join(parts)


def _rate_limit_wait(response: httpx.Response) -> float | None:
    """The wait a 429 asks for: its ``Retry-After`` header, else "retry after Ns" in the message."""
    from_header = retry_after_seconds(response.headers.get("Retry-After"))
    if from_header is not None:
        return from_header
    body = _error_body(response)
    error = body.get("error") if body is not None else None
    match = _RETRY_AFTER_IN_MESSAGE.search(error) if isinstance(error, str) else None
    if match is None:
        return None
    return _clamp(float(match.group(1)))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), clamped to [0, max]."""
    return parse_retry_after(value, cap=MAX_RETRY_AFTER_SECONDS)


def _clamp(seconds: float) -> float | None:
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _describe_exception(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."
