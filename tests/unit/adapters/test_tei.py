"""TEIEmbedder against a fake TEI served through httpx.MockTransport from recorded-shape fixtures."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from crawldex.adapters.embedder import Embedder, EmbedderInfo, Vector
from crawldex.adapters.tei import (
    DIMENSION_PROBE_TEXT,
    MAX_RETRY_AFTER_SECONDS,
    TEIEmbedder,
    _retry_after_seconds,
)
from crawldex.config import Settings
from crawldex.errors import ConfigurationError, EmbedderError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tei"
TEI_URL = "http://tei.test:8080"
MAX_RETRIES = 3
JITTER = 0.5  # makes each backoff delay exactly its nominal value: base * 2**attempt


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def recorded_error(name: str, *, headers: dict[str, str] | None = None) -> httpx.Response:
    """An error response as TEI sends it, from a fixture holding its status, content type and body."""
    record = load_fixture(name)
    body = record["body"]
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.Response(
        record["status"],
        content=content.encode("utf-8"),
        headers={"content-type": record["content_type"], **(headers or {})},
    )


def tei_error(status: int, error: str, error_type: str) -> httpx.Response:
    return httpx.Response(status, json={"error": error, "error_type": error_type})


Scripted = httpx.Response | httpx.HTTPError


@dataclass
class FakeTEI:
    """Answers /info, /embed and /health like TEI; scripted answers are served first, in order."""

    info: dict[str, Any] = field(default_factory=lambda: load_fixture("info.json"))
    base_vector: Vector = field(default_factory=lambda: load_fixture("embed_two_inputs.json")[0])
    embed_script: list[Scripted] = field(default_factory=list)
    health_script: list[Scripted] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def vector_for(self, text: str) -> Vector:
        """A 384-d vector that differs per text, so that the order of results can be checked."""
        vector = list(self.base_vector)
        vector[0] = zlib.crc32(text.encode("utf-8")) / 2**32
        return vector

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "GET" and path == "/info":
            return httpx.Response(200, json=self.info)
        if request.method == "GET" and path == "/health":
            return self._next(self.health_script) or httpx.Response(200)
        if request.method == "POST" and path == "/embed":
            scripted = self._next(self.embed_script)
            if scripted is not None:
                return scripted
            inputs = json.loads(request.content)["inputs"]
            return httpx.Response(200, json=[self.vector_for(text) for text in inputs])
        return httpx.Response(404)

    @staticmethod
    def _next(script: list[Scripted]) -> httpx.Response | None:
        if not script:
            return None
        item = script.pop(0)
        if isinstance(item, httpx.HTTPError):
            raise item
        return item

    @property
    def embed_payloads(self) -> list[dict[str, Any]]:
        """Bodies of the /embed requests, the connect-time probe excluded."""
        payloads = [json.loads(r.content) for r in self.requests if r.url.path == "/embed"]
        return [p for p in payloads if p["inputs"] != [DIMENSION_PROBE_TEXT]]


@dataclass
class Harness:
    server: FakeTEI = field(default_factory=FakeTEI)
    sleeps: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def connect(
        self, *, query_prompt: str | None = None, document_prompt: str | None = None
    ) -> TEIEmbedder:
        settings = Settings(
            tei_url=TEI_URL + "/",
            tei_timeout_seconds=5.0,
            tei_max_retries=MAX_RETRIES,
            tei_query_prompt_name=query_prompt,
            tei_document_prompt_name=document_prompt,
        )
        return await TEIEmbedder.connect(
            settings,
            transport=httpx.MockTransport(self.server.handle),
            sleep=self.sleep,
            on_response=self.statuses.append,
            jitter=lambda: JITTER,
        )


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
async def embedder(harness: Harness) -> AsyncIterator[TEIEmbedder]:
    tei = await harness.connect()
    yield tei
    await tei.aclose()


# connect and /info


async def test_connect_reads_info_and_probes_dimension(harness: Harness) -> None:
    tei = await harness.connect()
    try:
        assert tei.info == EmbedderInfo(
            model_id="sentence-transformers/all-MiniLM-L6-v2",
            dimension=384,
            max_input_tokens=256,
            max_batch_size=32,
        )
        info_request, probe_request = harness.server.requests
        assert (info_request.method, str(info_request.url)) == ("GET", f"{TEI_URL}/info")
        assert (probe_request.method, str(probe_request.url)) == ("POST", f"{TEI_URL}/embed")
        assert json.loads(probe_request.content) == {
            "inputs": [DIMENSION_PROBE_TEXT],
            "normalize": True,
            "truncate": False,
        }
        assert harness.statuses == [200, 200]
    finally:
        await tei.aclose()


async def test_satisfies_the_embedder_protocol(embedder: TEIEmbedder) -> None:
    as_protocol: Embedder = embedder
    assert as_protocol.info.dimension == 384


async def test_connect_uses_the_server_batch_size(harness: Harness) -> None:
    harness.server.info["max_client_batch_size"] = 8
    harness.server.info["max_input_length"] = 512
    tei = await harness.connect()
    try:
        assert (tei.info.max_batch_size, tei.info.max_input_tokens) == (8, 512)
        await tei.embed_documents([f"t{i}" for i in range(20)])
        assert [len(p["inputs"]) for p in harness.server.embed_payloads] == [8, 8, 4]
    finally:
        await tei.aclose()


async def test_connect_needs_a_tei_url() -> None:
    with pytest.raises(ConfigurationError, match="TEI_URL"):
        await TEIEmbedder.connect(Settings(tei_url=None))


@pytest.mark.parametrize("field_name", ["model_id", "max_input_length", "max_client_batch_size"])
async def test_connect_rejects_incomplete_info(harness: Harness, field_name: str) -> None:
    del harness.server.info[field_name]
    with pytest.raises(EmbedderError, match=field_name):
        await harness.connect()


async def test_connect_fails_when_the_probe_fails(harness: Harness) -> None:
    harness.server.embed_script.append(recorded_error("error_424_backend.json"))
    with pytest.raises(EmbedderError) as caught:
        await harness.connect()
    assert caught.value.status_code == 424


# embedding and batching


async def test_recorded_embed_response_is_returned_as_is(harness: Harness, embedder: TEIEmbedder) -> None:
    recorded = load_fixture("embed_two_inputs.json")
    harness.server.embed_script.append(httpx.Response(200, json=recorded))
    vectors = await embedder.embed_documents(["first chunk", "second chunk"])
    assert vectors == recorded
    assert all(isinstance(x, float) for vector in vectors for x in vector)
    assert harness.server.embed_payloads == [
        {"inputs": ["first chunk", "second chunk"], "normalize": True, "truncate": False}
    ]


async def test_batches_respect_max_client_batch_size(harness: Harness, embedder: TEIEmbedder) -> None:
    texts = [f"chunk number {i}" for i in range(70)]
    vectors = await embedder.embed_documents(texts)
    payloads = harness.server.embed_payloads
    assert [len(p["inputs"]) for p in payloads] == [32, 32, 6]
    assert [text for p in payloads for text in p["inputs"]] == texts
    assert vectors == [harness.server.vector_for(text) for text in texts]


async def test_exactly_one_full_batch(harness: Harness, embedder: TEIEmbedder) -> None:
    await embedder.embed_documents([f"t{i}" for i in range(32)])
    assert [len(p["inputs"]) for p in harness.server.embed_payloads] == [32]


async def test_empty_input_sends_nothing(harness: Harness, embedder: TEIEmbedder) -> None:
    sent_before = len(harness.server.requests)
    assert await embedder.embed_documents([]) == []
    assert len(harness.server.requests) == sent_before


async def test_embed_query_returns_one_vector(harness: Harness, embedder: TEIEmbedder) -> None:
    vector = await embedder.embed_query("what is crawldex?")
    assert vector == harness.server.vector_for("what is crawldex?")
    # A query may be longer than the model's input: TEI cuts it rather than answering 422.
    assert harness.server.embed_payloads == [
        {"inputs": ["what is crawldex?"], "normalize": True, "truncate": True}
    ]


async def test_prompt_names_sent_when_configured(harness: Harness) -> None:
    tei = await harness.connect(query_prompt="query", document_prompt="passage")
    try:
        await tei.embed_query("q")
        await tei.embed_documents(["d1", "d2"])
    finally:
        await tei.aclose()
    query_payload, document_payload = harness.server.embed_payloads
    assert query_payload["prompt_name"] == "query"
    assert document_payload["prompt_name"] == "passage"


async def test_only_the_configured_prompt_name_is_sent(harness: Harness) -> None:
    tei = await harness.connect(query_prompt="query")
    try:
        await tei.embed_query("q")
        await tei.embed_documents(["d"])
    finally:
        await tei.aclose()
    query_payload, document_payload = harness.server.embed_payloads
    assert query_payload["prompt_name"] == "query"
    assert "prompt_name" not in document_payload


async def test_no_prompt_name_when_none_configured(harness: Harness, embedder: TEIEmbedder) -> None:
    await embedder.embed_query("q")
    await embedder.embed_documents(["d"])
    assert all("prompt_name" not in p for p in harness.server.embed_payloads)


# retries


async def test_429_then_200_honours_retry_after(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.append(
        recorded_error("error_429_overloaded.json", headers={"Retry-After": "2"})
    )
    vectors = await embedder.embed_documents(["a", "b"])
    assert vectors == [harness.server.vector_for("a"), harness.server.vector_for("b")]
    assert harness.sleeps == [2.0]
    assert len(harness.server.embed_payloads) == 2
    assert harness.statuses[-2:] == [429, 200]


async def test_retry_after_is_clamped(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.append(
        recorded_error("error_429_overloaded.json", headers={"Retry-After": "86400"})
    )
    await embedder.embed_query("q")
    assert harness.sleeps == [MAX_RETRY_AFTER_SECONDS]


async def test_backoff_is_exponential_without_retry_after(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.extend(
        [
            recorded_error("error_429_overloaded.json"),
            recorded_error("error_503_unhealthy.json"),
            recorded_error("error_429_overloaded.json"),
        ]
    )
    await embedder.embed_query("q")
    assert harness.sleeps == [0.5, 1.0, 2.0]


async def test_jitter_spreads_the_delay(harness: Harness) -> None:
    jitters = iter([0.0, 0.75])
    tei = await TEIEmbedder.connect(
        Settings(tei_url=TEI_URL, tei_max_retries=2),
        transport=httpx.MockTransport(harness.server.handle),
        sleep=harness.sleep,
        jitter=lambda: next(jitters),
    )
    try:
        harness.server.embed_script.extend(recorded_error("error_429_overloaded.json") for _ in range(2))
        await tei.embed_query("q")
    finally:
        await tei.aclose()
    # Nominal delays 0.5 s then 1 s, each scaled by 0.5 + jitter.
    assert harness.sleeps == [0.25, 1.25]


async def test_503_exhausted_raises_with_status(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.extend(
        recorded_error("error_503_unhealthy.json") for _ in range(MAX_RETRIES + 1)
    )
    sent_before = len(harness.server.requests)
    with pytest.raises(EmbedderError) as caught:
        await embedder.embed_documents(["a"])
    assert caught.value.status_code == 503
    assert "Unhealthy" in str(caught.value)
    assert f"gave up after {MAX_RETRIES + 1} attempts" in str(caught.value)
    assert caught.value.transient  # an outage: a batch fails whole (crawldex.jobs.index_together)
    assert len(harness.server.requests) - sent_before == MAX_RETRIES + 1
    assert len(harness.sleeps) == MAX_RETRIES


async def test_zero_retries_means_one_attempt(harness: Harness) -> None:
    settings = Settings(tei_url=TEI_URL, tei_max_retries=0)
    tei = await TEIEmbedder.connect(
        settings, transport=httpx.MockTransport(harness.server.handle), sleep=harness.sleep
    )
    try:
        harness.server.embed_script.append(recorded_error("error_429_overloaded.json"))
        with pytest.raises(EmbedderError) as caught:
            await tei.embed_query("q")
    finally:
        await tei.aclose()
    assert caught.value.status_code == 429
    assert harness.sleeps == []


async def test_transport_errors_are_retried(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.extend(
        [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out")]
    )
    assert await embedder.embed_query("q") == harness.server.vector_for("q")
    assert len(harness.sleeps) == 2


async def test_timeouts_exhausted_raise_without_status(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.extend(httpx.ReadTimeout("timed out") for _ in range(MAX_RETRIES + 1))
    with pytest.raises(EmbedderError, match="ReadTimeout") as caught:
        await embedder.embed_query("q")
    assert caught.value.status_code is None
    assert caught.value.transient
    assert len(harness.sleeps) == MAX_RETRIES


async def test_overloaded_error_type_is_matched_case_insensitively(
    harness: Harness, embedder: TEIEmbedder
) -> None:
    # Some TEI builds and docs spell error_type in lower or upper case; it means the same thing.
    harness.server.embed_script.append(tei_error(500, "Model is overloaded", "OVERLOADED"))
    assert await embedder.embed_query("q") == harness.server.vector_for("q")
    assert len(harness.sleeps) == 1


# errors that are final


@pytest.mark.parametrize(
    ("fixture", "status", "expected_text"),
    [
        ("error_422_batch_size.json", 422, "batch size 33 > maximum allowed batch size 32"),
        ("error_422_input_too_long.json", 422, "`inputs` must have less than 256 tokens. Given: 301"),
        ("error_413_payload_too_large.json", 413, "length limit exceeded"),
        ("error_424_backend.json", 424, "Inference failed"),
        ("error_400_empty.json", 400, "`inputs` cannot be empty"),
    ],
)
async def test_non_retryable_errors_raise_immediately(
    harness: Harness, embedder: TEIEmbedder, fixture: str, status: int, expected_text: str
) -> None:
    harness.server.embed_script.append(recorded_error(fixture))
    sent_before = len(harness.server.requests)
    with pytest.raises(EmbedderError) as caught:
        await embedder.embed_documents(["a"])
    assert caught.value.status_code == status
    assert not caught.value.transient  # these inputs' failure: a batch's pages are tried one by one
    assert expected_text in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)
    assert len(harness.server.requests) - sent_before == 1
    assert harness.sleeps == []
    assert harness.statuses[-1] == status


@pytest.mark.parametrize(
    ("fixture", "error_type"),
    [
        ("error_422_batch_size.json", "Validation"),
        ("error_424_backend.json", "Backend"),
        ("error_400_empty.json", "Empty"),
    ],
)
async def test_error_message_carries_error_type(
    harness: Harness, embedder: TEIEmbedder, fixture: str, error_type: str
) -> None:
    harness.server.embed_script.append(recorded_error(fixture))
    with pytest.raises(EmbedderError, match=f"HTTP \\d+ {error_type}: "):
        await embedder.embed_query("q")


async def test_lowercase_validation_is_not_retried(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.append(tei_error(422, "prompt_name `nope` is not available", "validation"))
    with pytest.raises(EmbedderError, match="validation: prompt_name") as caught:
        await embedder.embed_query("q")
    assert caught.value.status_code == 422
    assert harness.sleeps == []


async def test_non_json_error_body_is_tolerated(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.append(
        httpx.Response(
            502, text="<html><body>Bad Gateway</body></html>", headers={"content-type": "text/html"}
        )
    )
    with pytest.raises(EmbedderError, match="HTTP 502: <html>") as caught:
        await embedder.embed_query("q")
    assert caught.value.status_code == 502


# malformed successes


def _nan_body() -> httpx.Response:
    return httpx.Response(200, content=b"[[NaN, 0.5]]", headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(200, text="not json"), "not JSON"),
        (httpx.Response(200, json={"embeddings": [[0.1, 0.2]]}), "dict"),
        (httpx.Response(200, json=[]), "0 items"),
        (httpx.Response(200, json=[[0.1] * 384, [0.2] * 384]), "2 items"),
        (httpx.Response(200, json=["0.1"]), "not a non-empty list"),
        (httpx.Response(200, json=[[]]), "not a non-empty list"),
        (httpx.Response(200, json=[["0.1", "0.2"]]), "expected finite numbers"),
        (httpx.Response(200, json=[[True, False]]), "expected finite numbers"),
        (httpx.Response(200, json=[[None]]), "expected finite numbers"),
        (_nan_body(), "expected finite numbers"),
        (httpx.Response(200, json=[[0.1] * 768]), "dimension 768, expected 384"),
    ],
)
async def test_malformed_responses_raise(
    harness: Harness, embedder: TEIEmbedder, response: httpx.Response, expected: str
) -> None:
    harness.server.embed_script.append(response)
    with pytest.raises(EmbedderError, match=expected):
        await embedder.embed_query("q")
    assert harness.sleeps == []


async def test_vectors_of_one_batch_must_agree_in_dimension(harness: Harness) -> None:
    harness.server.embed_script.append(httpx.Response(200, json=[[0.1, 0.2, 0.3]]))
    tei = await harness.connect()
    try:
        assert tei.info.dimension == 3
        harness.server.embed_script.append(httpx.Response(200, json=[[0.1, 0.2, 0.3], [0.1, 0.2]]))
        with pytest.raises(EmbedderError, match="dimension 2, expected 3"):
            await tei.embed_documents(["a", "b"])
    finally:
        await tei.aclose()


async def test_integers_are_accepted_as_floats(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.embed_script.append(httpx.Response(200, json=[[1] + [0] * 383]))
    vector = await embedder.embed_query("q")
    assert vector[:2] == [1.0, 0.0]
    assert all(type(x) is float for x in vector)


# health, hooks, closing


async def test_health_ok(harness: Harness, embedder: TEIEmbedder) -> None:
    await embedder.health()
    assert harness.server.requests[-1].url.path == "/health"
    assert harness.statuses[-1] == 200


async def test_health_failing_raises_without_retry(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.health_script.append(recorded_error("error_503_unhealthy.json"))
    with pytest.raises(EmbedderError, match="unhealthy") as caught:
        await embedder.health()
    assert caught.value.status_code == 503
    assert harness.sleeps == []


async def test_health_unreachable_raises(harness: Harness, embedder: TEIEmbedder) -> None:
    harness.server.health_script.append(httpx.ConnectError("connection refused"))
    with pytest.raises(EmbedderError, match="ConnectError") as caught:
        await embedder.health()
    assert caught.value.status_code is None


async def test_broken_response_hook_does_not_break_embedding(harness: Harness) -> None:
    def broken_hook(status: int) -> None:
        raise ValueError(status)

    settings = Settings(tei_url=TEI_URL)
    tei = await TEIEmbedder.connect(
        settings, transport=httpx.MockTransport(harness.server.handle), on_response=broken_hook
    )
    try:
        assert await tei.embed_query("q") == harness.server.vector_for("q")
    finally:
        await tei.aclose()


async def test_aclose_closes_the_client(harness: Harness) -> None:
    async with await harness.connect() as tei:
        await tei.embed_query("q")
    with pytest.raises(RuntimeError):
        await tei.embed_query("q")


async def test_info_before_connect_is_an_error() -> None:
    tei = TEIEmbedder(Settings(tei_url=TEI_URL))
    try:
        with pytest.raises(RuntimeError, match="before connect"):
            _ = tei.info
    finally:
        await tei.aclose()


# Retry-After parsing


def test_retry_after_seconds_forms() -> None:
    in_ten_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    parsed = _retry_after_seconds(in_ten_seconds)
    assert parsed is not None
    assert 8.0 <= parsed <= 10.0
    assert _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert _retry_after_seconds("1.5") == 1.5
    assert _retry_after_seconds("-3") == 0.0
    assert _retry_after_seconds("nan") is None
    assert _retry_after_seconds("soon") is None
    assert _retry_after_seconds("") is None
    assert _retry_after_seconds(None) is None
