"""FirecrawlScraper against a fake Firecrawl served through httpx.MockTransport from recorded-shape fixtures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from crawldex.adapters.fetching import FetchedPage, FetchError, PageFetcher
from crawldex.adapters.firecrawl import (
    MAX_RETRY_AFTER_SECONDS,
    FirecrawlScraper,
    retry_after_seconds,
)
from crawldex.config import Settings
from crawldex.errors import ConfigurationError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "firecrawl_scrape"
FIRECRAWL_URL = "http://firecrawl.test:3002"
API_KEY = "fc-test-key"
PAGE_URL = "https://docs.example.com/guides/autoscaling"
TIMEOUT_MS = 20000
MAX_RETRIES = 3  # FirecrawlScraper's default, which from_settings uses
JITTER = 0.5  # makes each backoff delay exactly its nominal value: 1s * 2**attempt


def recorded(name: str, *, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """An answer as Firecrawl sends it, from a fixture holding its status, headers and JSON body."""
    record = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    content = json.dumps(record["body"] if body is None else body).encode("utf-8")
    return httpx.Response(record["status"], content=content, headers={**record["headers"], **(headers or {})})


def fixture_body(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))["body"]


Scripted = httpx.Response | httpx.HTTPError


@dataclass
class FakeFirecrawl:
    """Serves the scripted answers of ``POST /v2/scrape`` in order, then the recorded success."""

    script: list[Scripted] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method != "POST" or request.url.path != "/v2/scrape":
            return httpx.Response(404, json={"success": False, "error": "Not found"})
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, httpx.HTTPError):
                raise item
            return item
        return recorded("success_200.json")

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]


@dataclass
class Harness:
    server: FakeFirecrawl = field(default_factory=FakeFirecrawl)
    sleeps: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "firecrawl_url": FIRECRAWL_URL + "/",
            "firecrawl_api_key": SecretStr(API_KEY),
            "firecrawl_timeout_ms": TIMEOUT_MS,
        }
        values.update(overrides)
        return Settings(**values)

    def scraper(self, **overrides: Any) -> FirecrawlScraper:
        return FirecrawlScraper.from_settings(
            self.settings(**overrides),
            transport=httpx.MockTransport(self.server.handle),
            sleep=self.sleep,
            jitter=lambda: JITTER,
        )

    def answer(self, *items: Scripted) -> None:
        self.server.script.extend(items)


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
async def scraper(harness: Harness) -> AsyncIterator[FirecrawlScraper]:
    firecrawl = harness.scraper()
    yield firecrawl
    await firecrawl.aclose()


async def fetch_error(scraper: FirecrawlScraper, url: str = PAGE_URL) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await scraper.fetch(url)
    return caught.value


# The request.


async def test_request_asks_for_fresh_main_content_markdown(
    harness: Harness, scraper: FirecrawlScraper
) -> None:
    await scraper.fetch(PAGE_URL)

    [request] = harness.server.requests
    assert request.method == "POST"
    assert str(request.url) == f"{FIRECRAWL_URL}/v2/scrape"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "url": PAGE_URL,
        "formats": ["markdown"],
        "onlyMainContent": True,
        "timeout": TIMEOUT_MS,
        "maxAge": 0,  # v2 would otherwise serve a cached copy up to two days old
    }


async def test_client_waits_longer_than_the_scrape_timeout(
    harness: Harness, scraper: FirecrawlScraper
) -> None:
    await scraper.fetch(PAGE_URL)

    timeouts = harness.server.requests[0].extensions["timeout"]
    assert all(value is not None and value > TIMEOUT_MS / 1000 for value in timeouts.values())


async def test_no_api_key_sends_no_authorization(harness: Harness) -> None:
    async with harness.scraper(firecrawl_api_key=None) as scraper:
        await scraper.fetch(PAGE_URL)

    assert "Authorization" not in harness.server.requests[0].headers


def test_from_settings_needs_a_firecrawl_url() -> None:
    with pytest.raises(ConfigurationError, match="CRAWLDEX_FIRECRAWL_URL"):
        FirecrawlScraper.from_settings(Settings(firecrawl_url=None))


def test_is_a_page_fetcher(scraper: FirecrawlScraper) -> None:
    fetcher: PageFetcher = scraper
    assert fetcher is scraper


# Successful scrapes.


async def test_success_reads_markdown_and_list_valued_metadata(scraper: FirecrawlScraper) -> None:
    page = await scraper.fetch(PAGE_URL)

    data = fixture_body("success_200.json")["data"]
    assert page == FetchedPage(
        requested_url=PAGE_URL,
        url="https://docs.example.com/guides/autoscaling/",  # metadata.url, the final URL
        status_code=200,
        markdown=data["markdown"],
        title="Autoscaling index workers",  # the first of a list
        description="How crawldex scales its workers on queue length",  # the first non-empty one
        language="en",
    )
    assert not page.gone


async def test_plain_string_metadata_and_missing_url_fall_back(
    harness: Harness, scraper: FirecrawlScraper
) -> None:
    body = fixture_body("success_200.json")
    metadata = body["data"]["metadata"]
    metadata.update(title="  One title ", description="Plain", language="de")
    del metadata["url"]
    harness.answer(recorded("success_200.json", body=body))

    page = await scraper.fetch(PAGE_URL)

    assert (page.title, page.description, page.language) == ("One title", "Plain", "de")
    assert page.url == metadata["sourceURL"]


@pytest.mark.parametrize("status", [404, 410])
async def test_page_that_answered_gone_is_returned_as_gone(
    harness: Harness, scraper: FirecrawlScraper, status: int
) -> None:
    body = fixture_body("page_404_200.json")
    body["data"]["metadata"]["statusCode"] = status
    harness.answer(recorded("page_404_200.json", body=body))

    page = await scraper.fetch("https://docs.example.com/guides/removed")

    assert page.gone
    assert page.status_code == status
    assert page.url == "https://docs.example.com/guides/removed"
    assert len(harness.server.requests) == 1
    assert harness.sleeps == []


async def test_recorded_404_page(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(recorded("page_404_200.json"))

    page = await scraper.fetch("https://docs.example.com/guides/removed")

    assert page.gone
    assert page.status_code == 404


@pytest.mark.parametrize(
    ("page_status", "retryable"), [(403, False), (401, False), (429, True), (500, True), (503, True)]
)
async def test_page_that_answered_an_error_is_a_fetch_error(
    harness: Harness, scraper: FirecrawlScraper, page_status: int, retryable: bool
) -> None:
    body = fixture_body("success_200.json")
    body["data"]["metadata"].update(statusCode=page_status, error="blocked")
    harness.answer(recorded("success_200.json", body=body))

    error = await fetch_error(scraper)

    assert error.retryable is retryable
    assert error.status_code == page_status
    assert "blocked" in str(error)
    assert len(harness.server.requests) == 1  # the page's own status is the job layer's to retry


async def test_success_false_is_a_fetch_error(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(recorded("success_false_200.json"))

    error = await fetch_error(scraper)

    assert "The scrape engine returned no content" in str(error)
    assert error.retryable is True
    assert len(harness.server.requests) == 1


async def test_missing_markdown_is_a_fetch_error(harness: Harness, scraper: FirecrawlScraper) -> None:
    body = fixture_body("success_200.json")
    del body["data"]["markdown"]
    harness.answer(recorded("success_200.json", body=body))

    error = await fetch_error(scraper)

    assert "no markdown" in str(error)
    assert error.retryable is False


async def test_body_that_is_not_json_is_a_fetch_error(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(httpx.Response(200, text="<html>proxy</html>", headers={"content-type": "text/html"}))

    error = await fetch_error(scraper)

    assert "not JSON" in str(error)
    assert error.retryable is True


# Final errors.


@pytest.mark.parametrize(
    ("fixture", "status", "words"),
    [
        ("error_400.json", 400, ["Bad Request", "invalid_type"]),
        ("error_401.json", 401, ["bad API key", "Unauthorized: Invalid token"]),
        ("error_402.json", 402, ["payment required", "Insufficient credits"]),
    ],
)
async def test_client_errors_are_final(
    harness: Harness, scraper: FirecrawlScraper, fixture: str, status: int, words: list[str]
) -> None:
    harness.answer(recorded(fixture))

    error = await fetch_error(scraper)

    assert error.retryable is False
    assert error.status_code == status
    for word in words:
        assert word in str(error)
    assert len(harness.server.requests) == 1
    assert harness.sleeps == []


async def test_forbidden_is_a_bad_key(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(httpx.Response(403, json={"success": False, "error": "Forbidden"}))

    error = await fetch_error(scraper)

    assert error.retryable is False
    assert "bad API key" in str(error)


async def test_scrape_timeout_is_retryable_by_the_job_not_here(
    harness: Harness, scraper: FirecrawlScraper
) -> None:
    harness.answer(recorded("error_408.json"))

    error = await fetch_error(scraper)

    assert error.retryable is True
    assert error.status_code == 408
    assert "SCRAPE_TIMEOUT" in str(error)
    assert len(harness.server.requests) == 1
    assert harness.sleeps == []


# Retried errors.


async def test_rate_limit_waits_as_long_as_the_message_says(
    harness: Harness, scraper: FirecrawlScraper
) -> None:
    harness.answer(recorded("error_429.json"))

    page = await scraper.fetch(PAGE_URL)

    assert page.status_code == 200
    assert harness.sleeps == [7.0]
    assert len(harness.server.requests) == 2
    assert harness.server.bodies[0] == harness.server.bodies[1]


async def test_rate_limit_honours_retry_after_header(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(recorded("error_429_retry_after.json"))

    await scraper.fetch(PAGE_URL)

    assert harness.sleeps == [3.0]


async def test_retry_after_header_wins_over_the_message(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(recorded("error_429.json", headers={"Retry-After": "2"}))

    await scraper.fetch(PAGE_URL)

    assert harness.sleeps == [2.0]


async def test_rate_limit_wait_is_capped(harness: Harness, scraper: FirecrawlScraper) -> None:
    body = fixture_body("error_429.json")
    body["error"] = body["error"].replace("retry after 7s", "retry after 3600s")
    harness.answer(
        recorded("error_429.json", body=body), recorded("error_429.json", headers={"Retry-After": "900"})
    )

    await scraper.fetch(PAGE_URL)

    assert harness.sleeps == [MAX_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS]


async def test_rate_limit_without_a_hint_backs_off(harness: Harness, scraper: FirecrawlScraper) -> None:
    hintless = {"success": False, "error": "Rate limit exceeded"}
    harness.answer(recorded("error_429.json", body=hintless), recorded("error_429.json", body=hintless))

    await scraper.fetch(PAGE_URL)

    assert harness.sleeps == [1.0, 2.0]


async def test_rate_limit_that_persists_gives_up_retryable(
    harness: Harness, scraper: FirecrawlScraper
) -> None:
    harness.answer(*[recorded("error_429.json") for _ in range(MAX_RETRIES + 1)])

    error = await fetch_error(scraper)

    assert error.retryable is True
    assert error.status_code == 429
    assert f"gave up after {MAX_RETRIES + 1} attempts" in str(error)
    assert harness.sleeps == [7.0] * MAX_RETRIES


@pytest.mark.parametrize(
    ("fixture", "status"), [("error_500.json", 500), ("error_502.json", 502), ("error_503.json", 503)]
)
async def test_server_errors_are_retried_with_backoff_then_retryable(
    harness: Harness, scraper: FirecrawlScraper, fixture: str, status: int
) -> None:
    harness.answer(*[recorded(fixture) for _ in range(MAX_RETRIES + 1)])

    error = await fetch_error(scraper)

    assert error.retryable is True
    assert error.status_code == status
    assert fixture_body(fixture)["error"] in str(error)
    assert len(harness.server.requests) == MAX_RETRIES + 1
    assert harness.sleeps == [1.0, 2.0, 4.0]


async def test_server_error_then_success(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(recorded("error_503.json"), recorded("error_502.json"))

    page = await scraper.fetch(PAGE_URL)

    assert page.title == "Autoscaling index workers"
    assert harness.sleeps == [1.0, 2.0]


async def test_gateway_timeout_is_retried(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(httpx.Response(504, text="upstream timed out"))

    await scraper.fetch(PAGE_URL)

    assert harness.sleeps == [1.0]


async def test_other_server_error_is_retryable_without_retrying_here(
    harness: Harness, scraper: FirecrawlScraper
) -> None:
    harness.answer(httpx.Response(501, json={"success": False, "error": "Not implemented"}))

    error = await fetch_error(scraper)

    assert error.retryable is True
    assert harness.sleeps == []


async def test_unknown_endpoint_is_final(harness: Harness) -> None:
    async with harness.scraper(firecrawl_url=FIRECRAWL_URL + "/wrong") as scraper:
        error = await fetch_error(scraper)

    assert error.retryable is False
    assert error.status_code == 404


async def test_jitter_spreads_the_backoff(harness: Harness) -> None:
    async with FirecrawlScraper(
        FIRECRAWL_URL,
        transport=httpx.MockTransport(harness.server.handle),
        sleep=harness.sleep,
        jitter=lambda: 0.0,
        max_retries=2,
    ) as scraper:
        harness.answer(recorded("error_500.json"), recorded("error_500.json"))
        await scraper.fetch(PAGE_URL)

    assert harness.sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
async def test_transport_errors_are_retried_then_retryable(
    harness: Harness, scraper: FirecrawlScraper, failure: httpx.HTTPError
) -> None:
    harness.answer(*[failure for _ in range(MAX_RETRIES + 1)])

    error = await fetch_error(scraper)

    assert error.retryable is True
    assert error.status_code is None
    assert type(failure).__name__ in str(error)
    assert harness.sleeps == [1.0, 2.0, 4.0]


async def test_transport_error_then_success(harness: Harness, scraper: FirecrawlScraper) -> None:
    harness.answer(httpx.ConnectError("connection refused"))

    page = await scraper.fetch(PAGE_URL)

    assert page.status_code == 200
    assert harness.sleeps == [1.0]


async def test_no_retries_configured(harness: Harness) -> None:
    async with FirecrawlScraper(
        FIRECRAWL_URL,
        transport=httpx.MockTransport(harness.server.handle),
        sleep=harness.sleep,
        max_retries=0,
    ) as scraper:
        harness.answer(recorded("error_503.json"))
        error = await fetch_error(scraper)

    assert error.retryable is True
    assert "gave up" not in str(error)
    assert harness.sleeps == []


# Retry-After parsing.


def test_retry_after_seconds() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("  ") is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("1.5") == 1.5
    assert retry_after_seconds("-4") == 0.0
    assert retry_after_seconds("nan") is None
    assert retry_after_seconds("100000") == MAX_RETRY_AFTER_SECONDS
    in_ten = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    waited = retry_after_seconds(in_ten)
    assert waited is not None
    assert 5.0 <= waited <= 10.0
