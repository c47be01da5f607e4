"""Embedder backed by a HuggingFace text-embeddings-inference (TEI) server, over its HTTP API.

Endpoints used: ``GET /info`` (model id and limits), ``POST /embed`` and ``GET /health``. TEI reports
failures as ``{"error": "...", "error_type": "Validation|Tokenizer|Empty|Overloaded|Backend|Unhealthy"}``;
the wire spelling of ``error_type`` has varied between versions and docs, so it is compared
case-insensitively. Overload (429) and unhealthy (503) answers, and transport errors, are retried with
exponential backoff; every other error is final.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Self

import httpx

from crawldex.adapters.embedder import EmbedderInfo, Vector
from crawldex.adapters.http_retry import parse_retry_after
from crawldex.config import Settings
from crawldex.errors import ConfigurationError, EmbedderError
from crawldex.telemetry.metrics import EMBED_BATCH_SIZE, EMBED_DURATION

__all__ = ["ResponseHook", "SleepFunction", "TEIEmbedder"]

logger = logging.getLogger(__name__)

SleepFunction = Callable[[float], Awaitable[None]]
"""Waits the given number of seconds; ``asyncio.sleep`` outside tests."""

ResponseHook = Callable[[int], None]
"""Called with the HTTP status of every response TEI sends (retried ones included)."""

RETRY_STATUSES: Final = frozenset({429, 503})
# error_type values (lower-cased) that mean "try again later" whatever status carried them.
RETRY_ERROR_TYPES: Final = frozenset({"overloaded", "unhealthy"})
DEFAULT_BACKOFF_BASE_SECONDS: Final = 0.5
DEFAULT_BACKOFF_MAX_SECONDS: Final = 30.0
# A Retry-After beyond this is clamped: an index job must not sit idle for longer than this per attempt.
MAX_RETRY_AFTER_SECONDS: Final = 60.0
# Embedded once at connect time to learn the vector dimension, which /info does not report.
DIMENSION_PROBE_TEXT: Final = "crawldex dimension probe"
_BODY_EXCERPT_CHARS: Final = 300


@dataclass(frozen=True)
class _TEIFailure:
    """One failed attempt: an error response, or no response at all (status_code None)."""

    message: str
    status_code: int | None
    retryable: bool
    retry_after: float | None = None


class TEIEmbedder:
    """`crawldex.adapters.embedder.Embedder` over a TEI server.

    Build it with `connect`, which reads the server's limits and the model's dimension. Batches are
    sent one after another, so at most ``max_client_batch_size`` inputs are in flight per embedder,
    well under TEI's ``max_concurrent_requests`` permits (512 by default).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: SleepFunction = asyncio.sleep,
        on_response: ResponseHook | None = None,
        jitter: Callable[[], float] = random.random,
        backoff_base_seconds: float = DEFAULT_BACKOFF_BASE_SECONDS,
        backoff_max_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS,
    ) -> None:
        """Prepare the HTTP client; no request is made. Use `connect` to get a usable embedder.

        ``jitter`` returns a number in [0, 1) that spreads each backoff delay over 0.5x to 1.5x of
        its nominal value.
        """
        if settings.tei_url is None:
            raise ConfigurationError("TEIEmbedder needs CRAWLDEX_TEI_URL")
        self._client = httpx.AsyncClient(
            base_url=settings.tei_url,
            timeout=httpx.Timeout(settings.tei_timeout_seconds),
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._max_retries = settings.tei_max_retries
        self._query_prompt_name = settings.tei_query_prompt_name or None
        self._document_prompt_name = settings.tei_document_prompt_name or None
        self._sleep = sleep
        self._on_response = on_response
        self._jitter = jitter
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds
        self._info: EmbedderInfo | None = None

    @classmethod
    async def connect(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: SleepFunction = asyncio.sleep,
        on_response: ResponseHook | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> TEIEmbedder:
        """Read ``/info`` and probe the model's dimension; raise `EmbedderError` if TEI cannot serve."""
        embedder = cls(settings, transport=transport, sleep=sleep, on_response=on_response, jitter=jitter)
        try:
            await embedder._load_info()
        except BaseException:
            await embedder.aclose()
            raise
        return embedder

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def info(self) -> EmbedderInfo:
        if self._info is None:
            raise RuntimeError("TEIEmbedder.info read before connect() completed")
        return self._info

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        if not texts:
            return []
        batch_size = self.info.max_batch_size
        vectors: list[Vector] = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            vectors.extend(await self._embed_batch(batch, self._document_prompt_name))
        return vectors

    async def embed_query(self, text: str) -> Vector:
        return (await self._embed_batch([text], self._query_prompt_name, truncate=True))[0]

    async def health(self) -> None:
        """One ``GET /health``, without retries: a health check reports the state of right now."""
        try:
            response = await self._client.get("/health")
        except httpx.HTTPError as exc:
            raise EmbedderError(f"TEI health check failed: {_describe_exception(exc)}") from exc
        self._notify(response.status_code)
        if response.status_code != httpx.codes.OK:
            raise EmbedderError(
                f"TEI is not healthy: {_describe_error_response(response)}", status_code=response.status_code
            )

    async def aclose(self) -> None:
        await self._client.aclose()

    # Internals.

    async def _load_info(self) -> None:
        response = await self._request("GET", "/info")
        try:
            body = response.json()
        except ValueError as exc:
            raise EmbedderError(
                f"TEI /info returned a body that is not JSON: {_excerpt(response.text)!r}"
            ) from exc
        if not isinstance(body, Mapping):
            raise EmbedderError(f"TEI /info returned {type(body).__name__}, expected a JSON object")
        model_id = body.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise EmbedderError("TEI /info has no model_id")
        # The dimension is filled in from the probe below; nothing reads `info` in between.
        self._info = EmbedderInfo(
            model_id=model_id,
            dimension=0,
            max_input_tokens=_positive_int(body, "max_input_length"),
            max_batch_size=_positive_int(body, "max_client_batch_size"),
        )
        # /info does not report the embedding dimension, so embed one short text and measure it.
        probe = await self._embed_batch([DIMENSION_PROBE_TEXT], None)
        self._info = replace(self._info, dimension=len(probe[0]))
        logger.info(
            "TEI connected: model=%s dimension=%d max_input_tokens=%d max_batch_size=%d",
            self._info.model_id,
            self._info.dimension,
            self._info.max_input_tokens,
            self._info.max_batch_size,
        )

    async def _embed_batch(
        self, inputs: list[str], prompt_name: str | None, *, truncate: bool = False
    ) -> list[Vector]:
        # Documents are never truncated (chunks are sized to fit; a longer one is a bug to see).
        # A query may be cut: its first max_input_length tokens are what the model can use.
        payload: dict[str, Any] = {"inputs": inputs, "normalize": True, "truncate": truncate}
        if prompt_name is not None:
            payload["prompt_name"] = prompt_name
        purpose = "query" if truncate else "document"
        EMBED_BATCH_SIZE.labels("tei", purpose).observe(len(inputs))
        started = time.perf_counter()
        response = await self._request("POST", "/embed", json=payload)
        EMBED_DURATION.labels("tei", purpose).observe(time.perf_counter() - started)
        # The dimension is unknown (0) only during the connect-time probe, which measures it.
        dimension = self._info.dimension if self._info is not None else 0
        return _parse_vectors(response, len(inputs), dimension if dimension > 0 else None)

    async def _request(self, method: str, path: str, *, json: object = None) -> httpx.Response:
        """Send one request, retrying transient failures; return a 2xx response or raise `EmbedderError`."""
        attempt = 0
        while True:
            outcome = await self._attempt(method, path, json)
            if isinstance(outcome, httpx.Response):
                return outcome
            if not outcome.retryable:
                raise EmbedderError(outcome.message, status_code=outcome.status_code)
            if attempt >= self._max_retries:
                raise EmbedderError(
                    f"{outcome.message} (gave up after {attempt + 1} attempts)",
                    status_code=outcome.status_code,
                    transient=True,
                )
            attempt += 1
            delay = self._retry_delay(attempt - 1, outcome.retry_after)
            logger.warning(
                "TEI %s %s: %s; retry %d/%d in %.2fs",
                method,
                path,
                outcome.message,
                attempt,
                self._max_retries,
                delay,
            )
            await self._sleep(delay)

    async def _attempt(self, method: str, path: str, json: object) -> httpx.Response | _TEIFailure:
        try:
            if json is None:
                response = await self._client.request(method, path)
            else:
                response = await self._client.request(method, path, json=json)
        except httpx.TransportError as exc:  # connection refused or reset, timeouts, ...
            return _TEIFailure(
                f"TEI {method} {path} failed: {_describe_exception(exc)}", None, retryable=True
            )
        except httpx.HTTPError as exc:
            return _TEIFailure(
                f"TEI {method} {path} failed: {_describe_exception(exc)}", None, retryable=False
            )
        self._notify(response.status_code)
        if response.is_success:
            return response
        error_type = _error_type(response)
        retryable = response.status_code in RETRY_STATUSES or (
            error_type is not None and error_type.lower() in RETRY_ERROR_TYPES
        )
        return _TEIFailure(
            f"TEI {method} {path} failed: {_describe_error_response(response)}",
            response.status_code,
            retryable=retryable,
            retry_after=_retry_after_seconds(response.headers.get("Retry-After")) if retryable else None,
        )

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        nominal = min(self._backoff_max, self._backoff_base * 2.0**attempt)
        return nominal * (0.5 + self._jitter())

    def _notify(self, status_code: int) -> None:
        if self._on_response is None:
            return
        try:
            self._on_response(status_code)
        except Exception:
            # A broken metrics hook must not fail an embedding that succeeded.
            logger.exception("TEI on_response hook raised")


def _positive_int(body: Mapping[str, object], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EmbedderError(f"TEI /info field {key!r} is {value!r}, expected a positive integer")
    return value


def _parse_vectors(response: httpx.Response, count: int, dimension: int | None) -> list[Vector]:
    """Check that an /embed answer is ``count`` finite float vectors of one (expected) length."""
    try:
        body = response.json()
    except ValueError as exc:
        raise EmbedderError(
            f"TEI /embed returned a body that is not JSON: {_excerpt(response.text)!r}",
            status_code=response.status_code,
        ) from exc
    if not isinstance(body, list) or len(body) != count:
        got = f"{len(body)} items" if isinstance(body, list) else type(body).__name__
        raise EmbedderError(
            f"TEI /embed returned {got}, expected a list of {count} vectors", status_code=response.status_code
        )
    vectors: list[Vector] = []
    want = dimension  # without an expected dimension, the first vector sets it for the rest
    for index, row in enumerate(body):
        if not isinstance(row, list) or not row:
            raise EmbedderError(
                f"TEI /embed item {index} is not a non-empty list of numbers",
                status_code=response.status_code,
            )
        vector: Vector = []
        for value in row:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise EmbedderError(
                    f"TEI /embed item {index} holds {value!r}, expected finite numbers",
                    status_code=response.status_code,
                )
            vector.append(float(value))
        if want is None:
            want = len(vector)
        if len(vector) != want:
            raise EmbedderError(
                f"TEI /embed item {index} has dimension {len(vector)}, expected {want}",
                status_code=response.status_code,
            )
        vectors.append(vector)
    return vectors


def _error_body(response: httpx.Response) -> Mapping[str, object] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, Mapping) else None


def _error_type(response: httpx.Response) -> str | None:
    body = _error_body(response)
    value = body.get("error_type") if body is not None else None
    return value if isinstance(value, str) else None


def _describe_error_response(response: httpx.Response) -> str:
    """``HTTP 422 Validation: <TEI's message>``, or an excerpt of a body that is not TEI's JSON."""
    head = f"HTTP {response.status_code}"
    body = _error_body(response)
    if body is not None and ("error" in body or "error_type" in body):
        error = body.get("error")
        error_type = body.get("error_type")
        parts = [head]
        if isinstance(error_type, str) and error_type:
            parts.append(f" {error_type}")
        if error is not None:
            parts.append(f": {error}")
        return "".join(parts)
    text = _excerpt(response.text)
    return f"{head}: {text}" if text else head


def _describe_exception(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _BODY_EXCERPT_CHARS else text[:_BODY_EXCERPT_CHARS] + "..."


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header, clamped to [0, MAX_RETRY_AFTER_SECONDS]."""
    return parse_retry_after(value, cap=MAX_RETRY_AFTER_SECONDS)
