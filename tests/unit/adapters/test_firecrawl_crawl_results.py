"""Reading a crawl's results back (``GET /v2/crawl/{id}``, ``GET /v2/batch/scrape/{id}``) from a fake Firecrawl
served through httpx.MockTransport with recorded-shape answers (tests/fixtures/firecrawl_crawl)."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from crawldex.adapters import firecrawl
from crawldex.adapters.firecrawl import (
    CrawlResultsError,
    CrawlResultsPage,
    FirecrawlScraper,
    InvalidCrawlIdError,
    checked_crawl_id,
)
from crawldex.config import Settings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "firecrawl_crawl"
FIRECRAWL_URL = "http://firecrawl.internal:3002"
API_KEY = "fc-test-key"
CRAWL_ID = "3f2b6d1e-8c4a-4b7e-9d2f-1a5c7e9b0d34"
BATCH_ID = "9a7c5e3b-1d2f-4a6b-8c0e-2f4a6c8e0b13"
MAX_RETRIES = 3  # FirecrawlScraper's default


def recorded(name: str, *, body: Any = None) -> httpx.Response:
    record = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    content = json.dumps(record["body"] if body is None else body).encode("utf-8")
    return httpx.Response(record["status"], content=content, headers=record["headers"])


def fixture_body(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))["body"]


Answer = httpx.Response | httpx.HTTPError | Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeFirecrawl:
    """Answers ``GET <path>?skip=<n>`` from ``pages`` (a list of answers per key is served in order)."""

    pages: dict[tuple[str, int], list[Answer]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def serve(self, path: str, skip: int, *answers: Answer) -> None:
        self.pages.setdefault((path, skip), []).extend(answers)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        skip = int(request.url.params.get("skip", "0"))
        answers = self.pages.get((request.url.path, skip))
        if request.method != "GET" or not answers:
            return recorded("error_404.json")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, httpx.HTTPError):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    @property
    def skips(self) -> list[str | None]:
        return [request.url.params.get("skip") for request in self.requests]


@dataclass
class Harness:
    server: FakeFirecrawl = field(default_factory=FakeFirecrawl)
    sleeps: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def client(self, **overrides: Any) -> FirecrawlScraper:
        values: dict[str, Any] = {"firecrawl_url": FIRECRAWL_URL, "firecrawl_api_key": SecretStr(API_KEY)}
        values.update(overrides)
        return FirecrawlScraper.from_settings(
            Settings(**values),
            transport=httpx.MockTransport(self.server.handle),
            sleep=self.sleep,
            jitter=lambda: 0.5,  # each backoff delay is exactly its nominal value
        )

    def serve_crawl(self) -> None:
        path = f"/v2/crawl/{CRAWL_ID}"
        for skip in (0, 3, 6):
            self.server.serve(path, skip, recorded(f"crawl_skip_{skip}.json"))


@pytest.fixture
def harness() -> Harness:
    return Harness()


async def results_error(client: FirecrawlScraper, crawl_id: str = CRAWL_ID) -> CrawlResultsError:
    with pytest.raises(CrawlResultsError) as caught:
        await client.get_crawl_results(crawl_id)
    return caught.value


# Pagination.


async def test_follows_next_across_every_page(harness: Harness) -> None:
    harness.serve_crawl()
    async with harness.client() as client:
        results = await client.get_crawl_results(CRAWL_ID)

    expected = [
        document
        for skip in (0, 3, 6)
        for document in fixture_body(f"crawl_skip_{skip}.json")["data"]  # in Firecrawl's order
    ]
    assert results.documents == expected
    assert len(results.documents) == 8
    assert (results.status, results.total, results.completed, results.credits_used) == ("completed", 8, 8, 8)
    assert results.expires_at == datetime(2026, 11, 25, 9, 14, 3, 118000, tzinfo=UTC)
    assert results.pages == 3
    assert results.complete
    assert harness.server.skips == [None, "3", "6"]
    assert harness.sleeps == []


async def test_next_is_never_followed_to_its_own_host(harness: Harness) -> None:
    # Firecrawl builds `next` from the Host it was asked by (https://api.firecrawl.dev/... here): the
    # client takes only its skip and keeps asking the configured Firecrawl.
    harness.serve_crawl()
    async with harness.client() as client:
        await client.get_crawl_results(CRAWL_ID)

    assert fixture_body("crawl_skip_0.json")["next"].startswith("https://api.firecrawl.dev/")
    for request in harness.server.requests:
        assert request.url.host == "firecrawl.internal"
        assert request.url.port == 3002
        assert request.url.path == f"/v2/crawl/{CRAWL_ID}"
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        assert request.method == "GET"


async def test_pages_are_yielded_one_at_a_time(harness: Harness) -> None:
    harness.serve_crawl()
    seen: list[CrawlResultsPage] = []
    async with harness.client() as client:
        async for page in client.iter_crawl_results(CRAWL_ID, "crawl"):
            seen.append(page)
            assert len(harness.server.requests) == len(seen)  # the next page is read only when asked for

    assert [(p.skip, p.next_skip, len(p.documents), p.more) for p in seen] == [
        (0, 3, 3, True),
        (3, 6, 3, True),
        (6, None, 2, False),
    ]


async def test_running_crawl_stops_where_the_cursor_stops_moving(harness: Harness) -> None:
    path = f"/v2/crawl/{CRAWL_ID}"
    harness.server.serve(path, 0, recorded("running_skip_0.json"))
    harness.server.serve(path, 2, recorded("running_skip_2.json"))
    async with harness.client() as client:
        results = await client.get_crawl_results(CRAWL_ID)

    assert results.status == "scraping"
    assert len(results.documents) == 2
    assert not results.complete  # Firecrawl has more to give later
    assert harness.server.skips == [None, "2"]


async def test_batch_scrape_results(harness: Harness) -> None:
    harness.server.serve(f"/v2/batch/scrape/{BATCH_ID}", 0, recorded("batch_scrape_skip_0.json"))
    async with harness.client() as client:
        results = await client.get_crawl_results(BATCH_ID, "batch_scrape")

    assert [d["metadata"]["statusCode"] for d in results.documents] == [200, 404]
    assert results.complete
    assert results.kind == "batch_scrape"


async def test_an_endless_cursor_stops_at_the_page_limit(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firecrawl, "MAX_RESULTS_PAGES", 4)
    path = f"/v2/crawl/{CRAWL_ID}"

    def one_more(request: httpx.Request) -> httpx.Response:
        skip = int(request.url.params.get("skip", "0"))
        body = {
            **fixture_body("running_skip_0.json"),
            "next": f"http://firecrawl.internal:3002{path}?skip={skip + 1}",
        }
        return httpx.Response(200, json=body)

    for skip in range(10):
        harness.server.serve(path, skip, one_more)
    async with harness.client() as client:
        results = await client.get_crawl_results(CRAWL_ID)

    assert results.pages == 4
    assert not results.complete


async def test_results_use_their_own_timeout(harness: Harness) -> None:
    harness.serve_crawl()
    async with harness.client(firecrawl_timeout_ms=5000) as client:
        await client.get_crawl_results(CRAWL_ID)

    timeouts = harness.server.requests[0].extensions["timeout"]
    assert set(timeouts.values()) == {firecrawl.RESULTS_TIMEOUT_SECONDS}


async def test_missing_and_empty_fields(harness: Harness) -> None:
    body = {"success": True, "status": "completed", "data": None, "next": ""}
    harness.server.serve(f"/v2/crawl/{CRAWL_ID}", 0, httpx.Response(200, json=body))
    async with harness.client() as client:
        results = await client.get_crawl_results(CRAWL_ID)

    assert results.documents == []
    assert (results.total, results.completed, results.credits_used, results.expires_at) == (None,) * 4
    assert results.complete


# Errors.


async def test_unknown_or_expired_crawl_is_final(harness: Harness) -> None:
    async with harness.client() as client:
        error = await results_error(client)

    assert error.status_code == 404
    assert error.retryable is False
    assert "Job not found" in str(error)
    assert "retention" in str(error)
    assert len(harness.server.requests) == 1
    assert harness.sleeps == []


async def test_bad_key_is_final(harness: Harness) -> None:
    harness.server.serve(f"/v2/crawl/{CRAWL_ID}", 0, recorded("error_401.json"))
    async with harness.client() as client:
        error = await results_error(client)

    assert (error.status_code, error.retryable) == (401, False)
    assert "bad API key" in str(error)
    assert len(harness.server.requests) == 1


async def test_rate_limit_waits_as_the_message_says_then_goes_on(harness: Harness) -> None:
    path = f"/v2/crawl/{CRAWL_ID}"
    harness.serve_crawl()
    harness.server.pages[(path, 3)].insert(0, recorded("error_429.json"))
    async with harness.client() as client:
        results = await client.get_crawl_results(CRAWL_ID)

    assert len(results.documents) == 8
    assert harness.sleeps == [4.0]
    assert harness.server.skips == [None, "3", "3", "6"]


async def test_server_errors_are_retried_with_backoff_then_retryable(harness: Harness) -> None:
    harness.server.serve(f"/v2/crawl/{CRAWL_ID}", 0, *[recorded("error_500.json")] * (MAX_RETRIES + 2))
    async with harness.client() as client:
        error = await results_error(client)

    assert error.retryable is True
    assert error.status_code == 500
    assert f"gave up after {MAX_RETRIES + 1} attempts" in str(error)
    assert "exception ID" in str(error)
    assert harness.sleeps == [1.0, 2.0, 4.0]


async def test_network_errors_are_retried(harness: Harness) -> None:
    path = f"/v2/crawl/{CRAWL_ID}"
    harness.serve_crawl()
    harness.server.pages[(path, 0)].insert(0, httpx.ConnectError("connection refused"))
    async with harness.client() as client:
        results = await client.get_crawl_results(CRAWL_ID)

    assert len(results.documents) == 8
    assert harness.sleeps == [1.0]


async def test_network_errors_that_persist_are_retryable(harness: Harness) -> None:
    harness.server.serve(f"/v2/crawl/{CRAWL_ID}", 0, httpx.ReadTimeout("timed out"))
    async with harness.client() as client:
        error = await results_error(client)

    assert error.retryable is True
    assert error.status_code is None
    assert "ReadTimeout" in str(error)
    assert len(harness.server.requests) == MAX_RETRIES + 1


@pytest.mark.parametrize(
    "next_link",
    [
        "https://api.firecrawl.dev/v2/crawl/another-crawl?skip=3",
        "https://api.firecrawl.dev/v2/scrape?skip=3",
        f"https://api.firecrawl.dev/v2/crawl/{CRAWL_ID}/../../admin?skip=3",
        f"https://api.firecrawl.dev/v2/crawl/{CRAWL_ID}?skip=three",
        f"https://api.firecrawl.dev/v2/crawl/{CRAWL_ID}?skip=3&skip=4",
        f"https://api.firecrawl.dev/v2/crawl/{CRAWL_ID}",
        "http://[::1",
    ],
)
async def test_a_next_link_elsewhere_is_refused(harness: Harness, next_link: str) -> None:
    body = {**fixture_body("crawl_skip_0.json"), "next": next_link}
    harness.server.serve(f"/v2/crawl/{CRAWL_ID}", 0, httpx.Response(200, json=body))
    async with harness.client() as client:
        error = await results_error(client)

    assert error.retryable is False
    assert "next" in str(error)
    assert len(harness.server.requests) == 1


@pytest.mark.parametrize(
    ("answer", "words", "retryable"),
    [
        (httpx.Response(200, text="<html>proxy error</html>"), "not JSON", True),
        (httpx.Response(200, json=[1, 2]), "not a JSON object", True),
        (httpx.Response(200, json={"success": False, "error": "Internal"}), "Internal", True),
        (httpx.Response(200, json={"success": True, "data": {"a": 1}}), "not an array", False),
        (httpx.Response(200, json={"success": True, "data": [], "next": 3}), "'next'", False),
    ],
)
async def test_answers_that_are_not_results(
    harness: Harness, answer: httpx.Response, words: str, retryable: bool
) -> None:
    harness.server.serve(f"/v2/crawl/{CRAWL_ID}", 0, answer)
    async with harness.client() as client:
        error = await results_error(client)

    assert words in str(error)
    assert error.retryable is retryable


async def test_an_oversize_answer_is_refused_while_reading(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firecrawl, "MAX_RESULTS_PAGE_BYTES", 1000)

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b'{"data": [', b'"x",' * 400, b'"y"]}'):
            yield chunk

    def streamed(request: httpx.Request) -> httpx.Response:  # no Content-Length: counted while read
        return httpx.Response(200, content=chunks())

    harness.server.serve(f"/v2/crawl/{CRAWL_ID}", 0, streamed)
    async with harness.client() as client:
        error = await results_error(client)

    assert "larger than 1000 bytes" in str(error)
    assert error.retryable is False


async def test_an_oversize_declared_length_is_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firecrawl, "MAX_RESULTS_PAGE_BYTES", 1000)
    harness.serve_crawl()
    async with harness.client() as client:
        error = await results_error(client)

    assert "larger than 1000 bytes" in str(error)


async def test_gzip_answers_are_read(harness: Harness) -> None:
    record = json.loads((FIXTURES / "crawl_skip_6.json").read_text(encoding="utf-8"))
    body = gzip.compress(json.dumps(record["body"]).encode())
    harness.server.serve(
        f"/v2/crawl/{CRAWL_ID}",
        0,
        httpx.Response(200, content=body, headers={**record["headers"], "content-encoding": "gzip"}),
    )
    async with harness.client() as client:
        results = await client.get_crawl_results(CRAWL_ID)

    assert len(results.documents) == 2


@pytest.mark.parametrize(
    "crawl_id", ["", "../v2/scrape", "a/b", "abc?skip=1", "-leading-dash", "x" * 129, "caf\u00e9", "a b"]
)
async def test_ids_that_cannot_be_firecrawl_ids_are_refused_before_any_request(
    harness: Harness, crawl_id: str
) -> None:
    async with harness.client() as client:
        with pytest.raises(InvalidCrawlIdError):
            await client.get_crawl_results(crawl_id)

    assert harness.server.requests == []


def test_firecrawl_ids_are_accepted() -> None:
    for crawl_id in (CRAWL_ID, "crawl_1", "A" * 128):
        assert checked_crawl_id(crawl_id) == crawl_id


async def test_unknown_kind_is_refused(harness: Harness) -> None:
    async with harness.client() as client:
        with pytest.raises(ValueError, match="kind"):
            await client.get_crawl_results(CRAWL_ID, "extract")  # type: ignore[arg-type]
