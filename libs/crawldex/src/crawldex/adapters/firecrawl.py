"""Page fetcher backed by Firecrawl's scrape API (``POST /v2/scrape``).

Each fetch asks for a fresh scrape (``maxAge: 0``: v2 otherwise serves a cached copy up to two days old)
of the page's main content as markdown. An HTTP 200 from Firecrawl is not yet a good page: the page's
own status is ``data.metadata.statusCode``, and a page that answered 404/410 comes back as a gone page.

Firecrawl errors carry ``{"success": false, "error": "...", "code"?: "..."}``. 429 (rate limit; the
wait is given only in the message text, "... retry after 42s ...", or a ``Retry-After`` header where a
proxy adds one) and 500/502/503/504 and transport failures are retried here with exponential backoff
and jitter; 408 (Firecrawl's own scrape timeout) is left to the job layer's retries, as it already took
a whole scrape timeout; 400/401/402/403 are final.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

import httpx

from crawldex.adapters.fetching import GONE_STATUSES, FetchedPage, FetchError
from crawldex.adapters.http_retry import parse_retry_after
from crawldex.config import Settings
from crawldex.errors import ConfigurationError

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "MAX_RETRY_AFTER_SECONDS",
    "SCRAPE_PATH",
    "FirecrawlScraper",
    "SleepFunction",
    "retry_after_seconds",
]

logger = logging.getLogger(__name__)

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
        attempt = 0
        while True:
            outcome = await self._attempt(url, payload)
            if isinstance(outcome, httpx.Response):
                return _parse_scrape(url, outcome)
            if not outcome.retry_here or attempt >= self._max_retries:
                tried = f" (gave up after {attempt + 1} attempts)" if attempt else ""
                raise FetchError(
                    outcome.message + tried, retryable=outcome.retryable, status_code=outcome.status_code
                )
            delay = self._retry_delay(attempt, outcome.retry_after)
            attempt += 1
            logger.warning(
                "Firecrawl scrape of %s: %s; retry %d/%d in %.2fs",
                url,
                outcome.message,
                attempt,
                self._max_retries,
                delay,
            )
            await self._sleep(delay)

    # Internals.

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
