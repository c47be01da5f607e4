"""Rate limits against the real Redis: the GCRA script, 429s with their headers, the separate webhook limit,
routes never limited, client identity, and failing open when Redis is unreachable."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.adapters.rate_limit import MICROSECONDS, RateLimit, RedisRateLimiter
from crawldex.config import QUEUE_INDEXING, Settings
from ingest_api.app import create_app
from tests.conftest import TEST_REDIS_URL, fixture_bytes
from tests.integration.test_api import AUTH, page_body, post_webhook

WEBHOOK_BODY = fixture_bytes("firecrawl", "v2_crawl_page.json")
LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def limited_app(settings: Settings, embedder: LocalModelEmbedder, **overrides: Any) -> TestClient:
    """The API with the limiter on: 3 API requests at once then 1 a minute, 4 webhooks at once then 1 a minute."""
    configured = settings.model_copy(
        update={
            "rate_limit_enabled": True,
            "rate_limit_api_per_minute": 1,
            "rate_limit_api_burst": 3,
            "rate_limit_webhook_per_minute": 1,
            "rate_limit_webhook_burst": 4,
            **overrides,
        }
    )
    return TestClient(create_app(configured, embedder=embedder))


@pytest.fixture
def client(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[TestClient]:
    with limited_app(settings, embedder) as test_client:
        yield test_client


# --- the script, driven by an explicit clock --------------------------------------------------------


async def test_script_admits_the_burst_then_one_per_interval(clean_redis: redis.Redis) -> None:
    limiter = RedisRateLimiter.from_url(TEST_REDIS_URL)
    limit = RateLimit(per_minute=60, burst=3)  # one a second
    start = 1_800_000_000 * MICROSECONDS
    try:
        answers = [await limiter.hit("api", "c", limit, now_us=start) for _ in range(4)]
        assert [(a.allowed, a.remaining) for a in answers] == [(True, 2), (True, 1), (True, 0), (False, 0)]
        assert answers[3].retry_after_seconds == 1
        assert answers[3].reset_seconds == 3
        # 0.999 s later: still refused; at 1 s: exactly one more.
        assert not (await limiter.hit("api", "c", limit, now_us=start + 999_999)).allowed
        again = await limiter.hit("api", "c", limit, now_us=start + MICROSECONDS)
        assert (again.allowed, again.remaining) == (True, 0)
        # Another client, and the same client under another limit name, have buckets of their own.
        assert (await limiter.hit("api", "d", limit, now_us=start)).remaining == 2
        assert (await limiter.hit("webhook", "c", limit, now_us=start)).remaining == 2
        # A refusal does not use up anything: after the bucket refills, the whole burst is back.
        refilled = await limiter.hit("api", "c", limit, now_us=start + 10 * MICROSECONDS)
        assert (refilled.allowed, refilled.remaining) == (True, 2)
    finally:
        await limiter.aclose()


async def test_bucket_key_expires_once_full_again(clean_redis: redis.Redis) -> None:
    limiter = RedisRateLimiter.from_url(TEST_REDIS_URL)
    try:
        await limiter.hit("api", "c", RateLimit(per_minute=60, burst=5))
    finally:
        await limiter.aclose()
    key = "crawldex:ratelimit:api:c"
    # The bucket refills in 1 s (one request used at 60 a minute): no key outlives that by much.
    assert 0 < clean_redis.pttl(key) <= 1_001


@hypothesis_settings(max_examples=30)
@given(
    per_minute=st.integers(1, 6000),
    burst=st.integers(1, 20),
    gaps_us=st.lists(st.integers(0, 3 * MICROSECONDS), min_size=1, max_size=40),
)
def test_script_agrees_with_a_token_bucket(per_minute: int, burst: int, gaps_us: list[int]) -> None:
    """GCRA is a token bucket: the script's answers equal an exact-arithmetic bucket of `burst` tokens
    refilled at one token per interval."""
    limit = RateLimit(per_minute=per_minute, burst=burst)

    async def run() -> list[tuple[bool, int]]:
        connection = redis.Redis.from_url(TEST_REDIS_URL)
        connection.delete("crawldex:ratelimit:prop:c")
        connection.close()
        limiter = RedisRateLimiter.from_url(TEST_REDIS_URL)
        now = 1_800_000_000 * MICROSECONDS
        answers = []
        try:
            for gap in gaps_us:
                now += gap
                decision = await limiter.hit("prop", "c", limit, now_us=now)
                answers.append((decision.allowed, decision.remaining))
        finally:
            await limiter.aclose()
        return answers

    tokens, expected = Fraction(burst), []
    for gap in gaps_us:
        tokens = min(Fraction(burst), tokens + Fraction(gap, limit.interval_us))
        if tokens >= 1:
            tokens -= 1
            expected.append((True, int(tokens)))
        else:
            expected.append((False, 0))
    assert asyncio.run(run()) == expected


# --- over HTTP ------------------------------------------------------------------------------------


def test_api_answers_429_after_the_burst_with_retry_after_and_headers(client: TestClient) -> None:
    before = counter("crawldex_rate_limited_total", limit="api")
    answers = [client.get("/api/change-events", headers=AUTH) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    assert all(a.headers["RateLimit-Limit"] == "3" for a in answers)
    assert all(a.headers["RateLimit-Policy"] == "3;w=180" for a in answers)
    assert all(0 < int(a.headers["RateLimit-Reset"]) <= 180 for a in answers)

    refused = client.get("/api/change-events", headers=AUTH)
    assert refused.status_code == 429
    assert refused.headers["Content-Type"] == "application/json"
    assert "rate limit exceeded" in refused.json()["detail"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Limit"] == "3"
    assert counter("crawldex_rate_limited_total", limit="api") == before + 1
    # Any other /api/* route shares the budget.
    assert client.post("/api/search", json={"query": "x"}, headers=AUTH).status_code == 429
    # The refusal is counted under its route, not as an unmatched path.
    assert counter("crawldex_http_requests_total", route="/api/search", method="POST", status="429") >= 1


def test_health_metrics_and_docs_are_never_limited(client: TestClient) -> None:
    for _ in range(4):
        client.get("/api/change-events", headers=AUTH)
    assert client.get("/api/change-events", headers=AUTH).status_code == 429
    for _ in range(6):
        for path in ("/health", "/livez", "/readyz", "/metrics", "/openapi.json"):
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text)
            assert "RateLimit-Limit" not in answer.headers


def test_webhooks_are_exempt_from_the_api_limit_and_limited_by_their_own(client: TestClient) -> None:
    for _ in range(3):
        client.get("/api/change-events", headers=AUTH)
    assert client.get("/api/change-events", headers=AUTH).status_code == 429  # API budget spent

    before = counter("crawldex_webhooks_rejected_total", source="firecrawl", reason="rate_limited")
    delivered = [post_webhook(client, WEBHOOK_BODY) for _ in range(4)]
    assert [d.status_code for d in delivered] == [202, 202, 202, 202]
    assert [d.headers["RateLimit-Remaining"] for d in delivered] == ["3", "2", "1", "0"]
    assert delivered[0].headers["RateLimit-Limit"] == "4"

    refused = post_webhook(client, WEBHOOK_BODY)
    assert refused.status_code == 429
    assert "webhook deliveries" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert (
        counter("crawldex_webhooks_rejected_total", source="firecrawl", reason="rate_limited") == before + 1
    )
    # The changedetection webhook is a webhook too: same (spent) webhook budget, not the API's.
    assert client.post("/api/webhook/changedetection", json={"url": "https://a.example/"}).status_code == 429


def test_a_delivery_is_counted_with_its_jobs_and_one_refused_queues_nothing(
    client: TestClient, clean_redis: redis.Redis
) -> None:
    delivered = [post_webhook(client, page_body(f"https://limit.example/{i}", "# Page")) for i in range(4)]
    assert [d.status_code for d in delivered] == [202] * 4
    assert [d.headers["RateLimit-Remaining"] for d in delivered] == ["3", "2", "1", "0"]
    queued = clean_redis.llen(f"rq:queue:{QUEUE_INDEXING}")
    assert queued == 4

    refused = post_webhook(client, page_body("https://limit.example/over", "# Over the limit"))
    assert refused.status_code == 429
    assert set(refused.json()) == {"detail"}
    assert int(refused.headers["Retry-After"]) >= 1
    assert all(name in refused.headers for name in LIMIT_HEADERS)
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert clean_redis.llen(f"rq:queue:{QUEUE_INDEXING}") == queued  # its job was never written


def test_every_firecrawl_answer_counts_against_the_webhook_limit(client: TestClient) -> None:
    """Rejected and page-less deliveries are counted on their own: a sender cannot get past its limit by
    sending what queues nothing."""
    before = counter("crawldex_webhooks_rejected_total", source="firecrawl", reason="rate_limited")
    answers = [
        post_webhook(client, WEBHOOK_BODY, signature="sha256=" + "0" * 64),  # 401
        post_webhook(client, b"{not json"),  # 400
        post_webhook(client, fixture_bytes("firecrawl", "crawl_started.json")),  # 200
        post_webhook(client, WEBHOOK_BODY),  # 202
    ]
    assert [a.status_code for a in answers] == [401, 400, 200, 202]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["3", "2", "1", "0"]
    for over in (
        post_webhook(client, WEBHOOK_BODY, signature="sha256=" + "0" * 64),
        post_webhook(client, fixture_bytes("firecrawl", "crawl_started.json")),
        post_webhook(client, page_body("https://limit.example/new", "# New")),
    ):
        assert over.status_code == 429, over.text
        assert "webhook deliveries" in over.json()["detail"]
    assert (
        counter("crawldex_webhooks_rejected_total", source="firecrawl", reason="rate_limited") == before + 3
    )


def test_a_delivery_refused_before_its_route_counts_too(
    settings: Settings, embedder: LocalModelEmbedder
) -> None:
    with limited_app(settings, embedder, max_body_bytes=2048) as client:
        oversized = [
            post_webhook(client, page_body(f"https://limit.example/{i}", "x" * 4096)) for i in range(4)
        ]
        assert [a.status_code for a in oversized] == [413] * 4
        assert [a.headers["RateLimit-Remaining"] for a in oversized] == ["3", "2", "1", "0"]
        assert post_webhook(client, WEBHOOK_BODY).status_code == 429


def test_wrong_tokens_are_counted_by_address_and_cannot_buy_fresh_buckets(client: TestClient) -> None:
    for attempt in range(3):
        answer = client.get("/api/change-events", headers={"Authorization": f"Bearer guess-{attempt}"})
        assert answer.status_code == 401
    assert client.get("/api/change-events", headers={"Authorization": "Bearer guess-4"}).status_code == 429
    assert client.get("/api/change-events").status_code == 429  # no token: the same address bucket
    # The holders of the real token have their own budget.
    assert client.get("/api/change-events", headers=AUTH).status_code == 200


def test_forwarded_header_is_ignored_unless_trusted(client: TestClient) -> None:
    for address in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        assert client.get("/api/jobs/x", headers={"X-Forwarded-For": address}).status_code == 401
    assert client.get("/api/jobs/x", headers={"X-Forwarded-For": "198.51.100.4"}).status_code == 429


def test_trusted_forwarded_header_names_the_client(settings: Settings, embedder: LocalModelEmbedder) -> None:
    with limited_app(settings, embedder, rate_limit_trust_forwarded=True) as client:
        spoofed = {"X-Forwarded-For": "203.0.113.50, 198.51.100.1"}  # the proxy appended the last entry
        for _ in range(3):
            assert client.get("/api/jobs/x", headers=spoofed).status_code == 401
        assert client.get("/api/jobs/x", headers=spoofed).status_code == 429
        # What the client wrote first is not its identity; the proxy's entry is.
        other = {"X-Forwarded-For": "203.0.113.50, 198.51.100.2"}
        assert client.get("/api/jobs/x", headers=other).status_code == 401
        # Without the header (or with garbage) the peer address counts.
        assert client.get("/api/jobs/x", headers={"X-Forwarded-For": "not-an-ip"}).status_code == 401


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connections to it are refused


def test_unreachable_redis_fails_open_without_500s(
    settings: Settings, embedder: LocalModelEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest_api.rate_limit")
    before = counter("crawldex_rate_limit_fail_open_total", limit="api")
    webhook_before = counter("crawldex_rate_limit_fail_open_total", limit="webhook")
    down = f"redis://127.0.0.1:{closed_port()}/0"
    with limited_app(settings, embedder, redis_url=down) as client:
        # Far past the burst of 3: every request goes through, none is limited or fails.
        answers = [client.get("/api/change-events", headers=AUTH) for _ in range(8)]
        assert [a.status_code for a in answers] == [200] * 8
        assert all("RateLimit-Limit" not in a.headers for a in answers)
        # A delivery of pages is counted with its jobs, which need Redis: 503 with Retry-After, never 500
        # (nothing was let through unchecked, so nothing failed open).
        for _ in range(6):
            refused = post_webhook(client, WEBHOOK_BODY)
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"]
            assert "redis" in refused.json()["detail"]
        # A delivery without pages is counted on its own, and goes through unchecked.
        started = post_webhook(client, fixture_bytes("firecrawl", "crawl_started.json"))
        assert started.status_code == 200, started.text
        assert "RateLimit-Limit" not in started.headers
    assert counter("crawldex_rate_limit_fail_open_total", limit="api") == before + 8
    assert counter("crawldex_rate_limit_fail_open_total", limit="webhook") == webhook_before + 1
    warnings = [r for r in caplog.records if r.name == "ingest_api.rate_limit"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per interval, not per request
    assert "Redis did not answer" in warnings[0].getMessage()


def test_limiter_off_sends_no_headers(settings: Settings, embedder: LocalModelEmbedder) -> None:
    with limited_app(settings, embedder, rate_limit_enabled=False) as client:
        answers = [client.get("/api/change-events", headers=AUTH) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert all("RateLimit-Limit" not in a.headers for a in answers)


def test_429_body_is_json_detail_only(client: TestClient) -> None:
    for _ in range(3):
        client.get("/api/change-events", headers=AUTH)
    refused = client.get("/api/change-events", headers=AUTH)
    assert set(json.loads(refused.content)) == {"detail"}
    assert all(name in refused.headers for name in LIMIT_HEADERS)
