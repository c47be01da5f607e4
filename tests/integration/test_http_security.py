"""HTTP security of the ingest-api: the webhook replay window, CORS (off unless configured), and credentials
compared in constant time."""

from __future__ import annotations

import ast
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import Settings
from crawldex.webhooks.firecrawl import sign
from ingest_api.app import create_app
from tests.conftest import API_TOKEN, WEBHOOK_SECRET, fixture_bytes
from tests.integration.test_api import AUTH, WEBHOOK

REPO = Path(__file__).resolve().parents[2]
CHANGE_TOKEN = "change-token-for-security-tests"
CHANGE_HOOK = "/api/webhook/changedetection"
ORIGIN = "https://search.example.com"


def rejected(source: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value("crawldex_webhooks_rejected_total", {"source": source, "reason": reason})
        or 0.0
    )


def make_client(settings: Settings, embedder: LocalModelEmbedder, **overrides: Any) -> TestClient:
    configured = settings.model_copy(update={"changedetection_token": SecretStr(CHANGE_TOKEN), **overrides})
    return TestClient(create_app(configured, embedder=embedder))


@pytest.fixture
def client(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[TestClient]:
    with make_client(settings, embedder) as test_client:
        yield test_client


def page_body(n: int) -> bytes:
    body = json.loads(fixture_bytes("firecrawl", "v2_crawl_page.json"))
    body["webhookId"] = f"replay-test-{n}-{time.monotonic_ns()}"
    return json.dumps(body).encode()


def deliver(client: TestClient, body: bytes, *, timestamp: str | None, signature: str | None = None) -> Any:
    headers = {
        "Content-Type": "application/json",
        "X-Firecrawl-Signature": signature or sign(WEBHOOK_SECRET, body),
    }
    if timestamp is not None:
        headers["X-Crawldex-Timestamp"] = timestamp
    return client.post(WEBHOOK, content=body, headers=headers)


def notify(client: TestClient, *, timestamp: str | None, token: str = CHANGE_TOKEN) -> Any:
    headers = {"X-Crawldex-Token": token}
    if timestamp is not None:
        headers["X-Crawldex-Timestamp"] = timestamp
    return client.post(CHANGE_HOOK, json={"url": "https://site.example/changed"}, headers=headers)


def queued(connection: redis.Redis, queue: str) -> int:
    return int(connection.llen(f"rq:queue:{queue}"))


# --- replay window ------------------------------------------------------------------------------------


def test_fresh_firecrawl_deliveries_are_accepted_in_both_formats(client: TestClient) -> None:
    assert deliver(client, page_body(1), timestamp=str(int(time.time()))).status_code == 202
    rfc3339 = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    assert deliver(client, page_body(2), timestamp=rfc3339).status_code == 202
    assert deliver(client, page_body(3), timestamp=None).status_code == 202  # Firecrawl itself sends none


def test_stale_and_future_firecrawl_deliveries_are_refused_and_queue_nothing(
    client: TestClient, clean_redis: redis.Redis
) -> None:
    before = rejected("firecrawl", "stale")
    stale = deliver(client, page_body(1), timestamp=str(int(time.time()) - 3600))
    assert stale.status_code == 401
    assert "CRAWLDEX_WEBHOOK_REPLAY_WINDOW_SECONDS" in stale.json()["detail"]
    assert "s ago" in stale.json()["detail"]
    future = deliver(client, page_body(2), timestamp=str(int(time.time()) + 3600))
    assert future.status_code == 401
    assert "in the future" in future.json()["detail"]
    assert rejected("firecrawl", "stale") == before + 2
    assert queued(clean_redis, "indexing") == 0


def test_unreadable_timestamp_is_a_bad_request(client: TestClient) -> None:
    before = rejected("firecrawl", "payload")
    answer = deliver(client, page_body(1), timestamp="last tuesday")
    assert answer.status_code == 400
    assert "X-Crawldex-Timestamp" in answer.json()["detail"]
    assert rejected("firecrawl", "payload") == before + 1


def test_overlong_timestamp_is_refused_with_its_reason(client: TestClient, clean_redis: redis.Redis) -> None:
    before = rejected("firecrawl", "payload")
    answer = deliver(client, page_body(1), timestamp="1" * 65)
    assert answer.status_code == 422
    assert "X-Crawldex-Timestamp" in answer.json()["detail"]
    assert rejected("firecrawl", "payload") == before + 1
    assert queued(clean_redis, "indexing") == 0


def test_the_firecrawl_webhook_documents_the_headers_it_reads(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][WEBHOOK]["post"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert set(headers) == {"X-Firecrawl-Signature", "X-Crawldex-Timestamp"}
    assert headers["X-Crawldex-Timestamp"]["schema"]["maxLength"] == 64
    assert "requestBody" in operation


def test_signature_is_checked_before_the_timestamp(client: TestClient) -> None:
    before_signature, before_stale = rejected("firecrawl", "signature"), rejected("firecrawl", "stale")
    answer = deliver(client, page_body(1), timestamp="0", signature="sha256=" + "0" * 64)
    assert answer.status_code == 401
    assert "X-Firecrawl-Signature" in answer.json()["detail"]
    assert rejected("firecrawl", "signature") == before_signature + 1
    assert rejected("firecrawl", "stale") == before_stale


def test_changedetection_stale_notifications_are_refused(
    client: TestClient, clean_redis: redis.Redis
) -> None:
    before = rejected("changedetection", "stale")
    stale = notify(client, timestamp=str(int(time.time()) - 301 - 5))
    assert stale.status_code == 401
    assert "CRAWLDEX_WEBHOOK_REPLAY_WINDOW_SECONDS" in stale.json()["detail"]
    assert rejected("changedetection", "stale") == before + 1
    assert queued(clean_redis, "rescrape") == 0
    # A wrong token is refused as such, whatever the timestamp says.
    assert "X-Crawldex-Token" in notify(client, timestamp="0", token="wrong").json()["detail"]
    assert notify(client, timestamp=str(int(time.time()))).status_code == 202


def test_window_of_zero_accepts_any_timestamp(settings: Settings, embedder: LocalModelEmbedder) -> None:
    with make_client(settings, embedder, webhook_replay_window_seconds=0) as client:
        assert deliver(client, page_body(1), timestamp="0").status_code == 202
        assert notify(client, timestamp="1970-01-01T00:00:00Z").status_code == 202


# --- CORS ------------------------------------------------------------------------------------------------


def preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        "/api/search",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def test_cors_is_off_by_default(client: TestClient) -> None:
    answer = preflight(client, ORIGIN)
    assert "access-control-allow-origin" not in answer.headers
    assert answer.status_code == 405  # no CORS handling at all: OPTIONS is just an unknown method
    simple = client.get("/api/change-events", headers={**AUTH, "Origin": ORIGIN})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_the_configured_origins_only(settings: Settings, embedder: LocalModelEmbedder) -> None:
    with make_client(
        settings,
        embedder,
        cors_allow_origins=[ORIGIN],
        rate_limit_enabled=True,
        rate_limit_api_per_minute=1,
        rate_limit_api_burst=2,
    ) as client:
        allowed = preflight(client, ORIGIN)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in allowed.headers

        other = preflight(client, "https://evil.example")
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers

        answers = [client.get("/api/change-events", headers={**AUTH, "Origin": ORIGIN}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        for answer in answers:  # a browser may read the limiter's answers, the 429 included
            assert answer.headers["access-control-allow-origin"] == ORIGIN
            exposed = answer.headers["access-control-expose-headers"].lower()
            assert "ratelimit-remaining" in exposed
            assert "retry-after" in exposed
        foreign = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers


# --- constant-time comparisons ------------------------------------------------------------------------


@pytest.fixture
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes | str, bytes | str]]:
    """Every hmac.compare_digest call, recorded and still answered by the real function."""
    calls: list[tuple[bytes | str, bytes | str]] = []
    real: Callable[[Any, Any], bool] = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return calls


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_every_credential_is_compared_in_constant_time(
    settings: Settings, embedder: LocalModelEmbedder, compare_calls: list[tuple[bytes | str, bytes | str]]
) -> None:
    with make_client(settings, embedder, rate_limit_enabled=True) as client:
        compare_calls.clear()
        assert (
            client.get("/api/change-events", headers={"Authorization": "Bearer wrong-api-token"}).status_code
            == 401
        )
        # The limiter's choice of bucket, then the bearer dependency.
        assert [(as_text(a), as_text(b)) for a, b in compare_calls] == [("wrong-api-token", API_TOKEN)] * 2

        compare_calls.clear()
        body = page_body(1)
        assert deliver(client, body, timestamp=None, signature="sha256=" + "1" * 64).status_code == 401
        assert [as_text(a) for a, _ in compare_calls] == ["1" * 64]
        assert as_text(compare_calls[0][1]) == sign(WEBHOOK_SECRET, body).removeprefix("sha256=")

        compare_calls.clear()
        assert notify(client, timestamp=None, token="wrong-change-token").status_code == 401
        wrong_query = client.post(
            CHANGE_HOOK, params={"token": "wrong-query-token"}, json={"url": "https://a.example/"}
        )
        assert wrong_query.status_code == 401
        assert [(as_text(a), as_text(b)) for a, b in compare_calls] == [
            ("wrong-change-token", CHANGE_TOKEN),
            ("wrong-query-token", CHANGE_TOKEN),
        ]


def test_no_credential_is_compared_with_equality_operators() -> None:
    """Where credentials are checked (the HTTP layer, the webhook parsers, the limiter), no == or != has
    an operand named like one: those comparisons go through hmac.compare_digest."""
    credential = re.compile(
        r"token|secret|signature|password|api_key|credential|authorization", re.IGNORECASE
    )
    sources = [
        *(REPO / "services/ingest-api/src/ingest_api").rglob("*.py"),
        *(REPO / "libs/crawldex/src/crawldex/webhooks").rglob("*.py"),
        REPO / "libs/crawldex/src/crawldex/adapters/rate_limit.py",
    ]
    assert len(sources) > 10
    offending = []
    for path in sources:
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                operands = [node.left, *node.comparators]
                names = [ast.get_source_segment(text, operand) or "" for operand in operands]
                if any(credential.search(name) for name in names):
                    offending.append(
                        f"{path.relative_to(REPO)}:{node.lineno}: {ast.get_source_segment(text, node)}"
                    )
    assert offending == []
