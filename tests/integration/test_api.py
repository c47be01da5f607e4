"""ingest-api over HTTP (in-process ASGI) with its embedded queue consumer: webhooks → jobs → search."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import Settings
from crawldex.webhooks.firecrawl import sign
from ingest_api.app import create_app
from tests.conftest import API_TOKEN, WEBHOOK_SECRET, fixture_bytes

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
WEBHOOK = "/api/webhook/firecrawl"


@pytest.fixture
def client(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[TestClient]:
    app = create_app(
        settings.model_copy(update={"embedded_workers": True, "max_body_bytes": 64 * 1024}), embedder=embedder
    )
    with TestClient(app) as test_client:
        yield test_client


def post_webhook(client: TestClient, body: bytes, *, signature: str | None = None) -> Any:
    headers = {
        "Content-Type": "application/json",
        "X-Firecrawl-Signature": signature or sign(WEBHOOK_SECRET, body),
    }
    return client.post(WEBHOOK, content=body, headers=headers)


def page_body(url: str, markdown: str, *, crawl_id: str = "crawl-1", event: str = "crawl.page") -> bytes:
    return json.dumps(
        {
            "success": True,
            "type": event,
            "id": crawl_id,
            "webhookId": f"wh-{time.monotonic_ns()}",
            "data": [
                {
                    "markdown": markdown,
                    "metadata": {"url": url, "sourceURL": url, "statusCode": 200, "title": "T"},
                }
            ],
        }
    ).encode()


def wait_for_job(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}", headers=AUTH).json()
        if job["status"] in ("finished", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")


def search(client: TestClient, query: str, mode: str = "hybrid", **extra: Any) -> dict[str, Any]:
    response = client.post("/api/search", json={"query": query, "mode": mode, **extra}, headers=AUTH)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def point_ids(client: TestClient, query: str) -> list[tuple[str, str]]:
    return sorted((r["id"], r["text"]) for r in search(client, query, "keyword", limit=100)["results"])


def test_signed_page_is_indexed_and_searchable_in_every_mode(client: TestClient) -> None:
    response = post_webhook(client, fixture_bytes("firecrawl", "v2_crawl_page.json"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["queued_jobs"] == 1
    assert body["event"] == "crawl.page"
    job = wait_for_job(client, body["job_ids"][0])
    assert job["status"] == "finished", job
    assert job["result"]["status"] == "indexed"
    assert job["result"]["chunk_count"] >= 1
    for mode in ("hybrid", "semantic", "keyword", "bm25"):
        results = search(client, "how does KEDA scale index workers", mode)
        assert results["results"][0]["url"] == "https://docs.example.com/guides/autoscaling/", mode
        assert results["mode"] == ("keyword" if mode == "bm25" else mode)


def test_replayed_webhook_leaves_identical_index(client: TestClient) -> None:
    body = fixture_bytes("firecrawl", "v2_crawl_page.json")
    first = post_webhook(client, body).json()
    wait_for_job(client, first["job_ids"][0])
    before = point_ids(client, "KEDA autoscaling replicas queue")
    assert before
    for _ in range(3):
        replay = post_webhook(client, body)
        assert replay.status_code == 202
        assert replay.json()["job_ids"] == first["job_ids"]
        assert replay.json()["deduplicated_jobs"] == 1
    assert point_ids(client, "KEDA autoscaling replicas queue") == before


def test_changed_page_replaces_old_text(client: TestClient) -> None:
    url = "https://site.example/page"
    old = "# Page\n\n" + "\n\n".join(
        f"## Part {i}\n\n" + "Flamingos wade in salty lagoons. " * 30 for i in range(6)
    )
    first = post_webhook(client, page_body(url, old)).json()
    old_chunks = wait_for_job(client, first["job_ids"][0])["result"]["chunk_count"]
    second = post_webhook(client, page_body(url, "# Page\n\nPelicans dive for fish off the coast.")).json()
    job = wait_for_job(client, second["job_ids"][0])
    assert job["result"]["status"] == "indexed"
    assert job["result"]["chunk_count"] == 1 < old_chunks
    for mode in ("hybrid", "semantic", "keyword"):
        assert all(
            "Flamingos" not in r["text"] for r in search(client, "flamingos salty lagoons", mode)["results"]
        )
        hits = search(client, "pelicans dive for fish", mode)["results"]
        assert [h["url"] for h in hits] == [url]
        assert "Pelicans" in hits[0]["text"]


@pytest.mark.parametrize("name", ["v1_batch_scrape_page.json", "v0_crawl_page.json"])
def test_older_payload_shapes_are_indexed(client: TestClient, name: str) -> None:
    response = post_webhook(client, fixture_bytes("firecrawl", name))
    assert response.status_code == 202, response.text
    assert wait_for_job(client, response.json()["job_ids"][0])["status"] == "finished"


@pytest.mark.parametrize(
    ("name", "status_text"),
    [
        ("crawl_started.json", "acknowledged"),
        ("crawl_completed.json", "acknowledged"),
        ("unknown_event.json", "acknowledged"),
        ("crawl_page_failed.json", "recorded"),
        ("crawl_page_404.json", "recorded"),
    ],
)
def test_events_that_index_nothing_are_acknowledged(client: TestClient, name: str, status_text: str) -> None:
    response = post_webhook(client, fixture_bytes("firecrawl", name))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == status_text
    assert response.json()["job_ids"] == []


def test_failed_page_is_recorded(client: TestClient) -> None:
    response = post_webhook(client, fixture_bytes("firecrawl", "crawl_page_failed.json"))
    assert response.json()["failed_documents"] == [
        {"url": "https://docs.example.com/broken", "error": "Request timed out after 30000ms"}
    ]
    services = client.app.state.services  # type: ignore[attr-defined]
    events = client.portal.call(services.crawl_events.list_for_crawl, "0d9f3c1e-5b7a-4c1d-9e2f-8a6b4c3d2e1f")  # type: ignore[union-attr]
    assert [(e.event_type, e.success, e.url) for e in events] == [
        ("crawl.page", False, "https://docs.example.com/broken")
    ]

    # Several failed pages in one delivery: each row holds its own page's error, not all of them.
    pages = [
        {"markdown": "x", "metadata": {"url": f"https://gone.example/{code}", "statusCode": code}}
        for code in (404, 500)
    ]
    body = json.dumps({"success": True, "type": "crawl.page", "id": "crawl-fails", "data": pages}).encode()
    assert post_webhook(client, body).json()["status"] == "recorded"
    events = client.portal.call(services.crawl_events.list_for_crawl, "crawl-fails")  # type: ignore[union-attr]
    assert [(e.url, e.error) for e in events] == [
        ("https://gone.example/404", "page answered HTTP 404"),
        ("https://gone.example/500", "page answered HTTP 500"),
    ]


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=" + "0" * 64, "sha256=nothex", "plain"],
    ids=["missing", "empty", "wrong", "bad-hex", "no-prefix"],
)
def test_webhook_signature_is_required(client: TestClient, signature: str | None) -> None:
    body = fixture_bytes("firecrawl", "v2_crawl_page.json")
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Firecrawl-Signature"] = signature
    response = client.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 401
    assert "X-Firecrawl-Signature" in response.json()["detail"]


def test_webhook_bad_bodies(client: TestClient) -> None:
    for body, status in ((b"{not json", 400), (b"", 400), (b"[1,2]", 422), (b'{"data": []}', 422)):
        response = post_webhook(client, body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["detail"]


def test_lone_surrogates_in_json_are_never_a_500(client: TestClient) -> None:
    """A \\ud800 escape is valid JSON that no UTF-8 text can hold (JavaScript writes one for a string cut
    inside an emoji): a webhook's page is indexed with U+FFFD in its place, and the API's own models
    refuse it with a 422 that says why."""
    body = (
        b'{"success": true, "type": "crawl.page", "id": "crawl-\\ud800", "webhookId": "wh-surrogate",'
        b' "data": [{"markdown": "Kittiwakes nest on cliffs \\ud83d here.",'
        b' "metadata": {"url": "https://surrogate.example/\\udc00", "statusCode": 200}}]}'
    )
    response = post_webhook(client, body)
    assert response.status_code == 202, response.text
    assert response.json()["crawl_id"] == "crawl-\ufffd"
    assert wait_for_job(client, response.json()["job_ids"][0])["status"] == "finished"
    [hit] = search(client, "kittiwakes", "keyword")["results"]
    assert hit["text"] == "Kittiwakes nest on cliffs \ufffd here."
    assert hit["url"] == "https://surrogate.example/\ufffd"

    for path, content in (
        ("/api/search", b'{"query": "\\ud800"}'),
        ("/api/search", b'{"query": "x", "nope": "\\udfff"}'),
        ("/api/index", b'{"url": "https://a.example/\\ud800", "markdown": "x"}'),
        ("/api/test-index", b'{"url": "https://a.example/", "markdown": "\\ud800"}'),
    ):
        refused = client.post(path, content=content, headers={**AUTH, "Content-Type": "application/json"})
        assert refused.status_code == 422, (path, content, refused.text)
        assert refused.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path", ["/api/search", "/api/index", "/api/test-index"])
def test_api_needs_bearer_token(client: TestClient, path: str) -> None:
    body = {"query": "x", "url": "https://a.example/", "markdown": "x"}
    assert client.post(path, json=body).status_code == 401
    wrong = client.post(path, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/api/jobs/x").status_code == 401


def test_index_api_and_job_status(client: TestClient) -> None:
    response = client.post(
        "/api/index",
        json={
            "url": "https://api.example/doc",
            "markdown": "# Doc\n\nOtters hold hands.",
            "html": "<p>ignored</p>",
            "statusCode": 200,
        },
        headers=AUTH,
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "finished"
    assert job["queue"] == "indexing"
    assert job["error"] is None
    assert job["enqueued_at"]
    assert job["ended_at"]
    assert search(client, "otters holding hands")["results"][0]["url"] == "https://api.example/doc"


def test_test_index_reports_stage_timings(client: TestClient) -> None:
    response = client.post(
        "/api/test-index",
        json={"url": "https://api.example/t", "markdown": "# T\n\nTimed text."},
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "indexed"
    assert body["chunk_count"] == 1
    assert {"clean", "chunk", "embed", "upsert", "total"} <= set(body["timings_ms"])
    assert all(value >= 0 for value in body["timings_ms"].values())
    again = client.post(
        "/api/test-index",
        json={"url": "https://api.example/t", "markdown": "# T\n\nTimed text."},
        headers=AUTH,
    ).json()
    assert again["status"] == "indexed"
    assert "embed" in again["timings_ms"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "JSON"),
        (b"", "Field required"),
        (b"[]", "valid dictionary"),
        (b'{"url": 5, "markdown": "x"}', "string"),
        (b'{"url": "https://a.example/", "markdown": ["x"]}', "string"),
        (b'{"markdown": "x"}', "Field required"),
        (b'{"url": "https://a.example/"}', "Field required"),
        (b'{"url": "https://a.example/", "markdown": ""}', "at least 1 character"),
        (b'{"url": "https://a.example/", "markdown": "   "}', "blank"),
        (b'{"url": "not a url", "markdown": "x"}', "http or https"),
        (b'{"url": "https://a.example/", "markdown": "x", "crawl_id": {"a": 1}}', "string"),
    ],
)
@pytest.mark.parametrize("path", ["/api/index", "/api/test-index"])
def test_bad_index_input_is_a_4xx_with_a_reason(
    client: TestClient, path: str, content: bytes, reason: str
) -> None:
    response = client.post(path, content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert reason in response.text


def test_oversize_bodies_are_413(client: TestClient) -> None:
    big = json.dumps({"url": "https://a.example/", "markdown": "x" * 70_000}).encode()
    response = client.post("/api/index", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert "CRAWLDEX_MAX_BODY_BYTES" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"x" * 10_000

    streamed = client.post(
        WEBHOOK,
        content=chunks(),
        headers={"Content-Type": "application/json", "X-Firecrawl-Signature": "sha256=" + "0" * 64},
    )
    assert streamed.status_code == 413


def test_search_bad_input(client: TestClient) -> None:
    for body in (
        {},
        {"query": ""},
        {"query": "x", "limit": 0},
        {"query": "x", "limit": 101},
        {"query": "x", "offset": -1},
        {"query": "x", "mode": "vector"},
        {"query": "x", "filters": {"nope": 1}},
        {"query": "x", "offset": 5000},
    ):
        response = client.post("/api/search", json=body, headers=AUTH)
        assert response.status_code == 422, body
    for constant in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):  # Python's json reads all four
        content = b'{"query": "x", "filters": {"indexed_after": %s}}' % constant
        response = client.post(
            "/api/search", content=content, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, (constant, response.text)


def test_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/api/jobs/does-not-exist", headers=AUTH).status_code == 404
    assert client.get("/api/jobs/bad id!", headers=AUTH).status_code == 422


def test_health_endpoints(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "healthy",
        "checks": {"redis": "ok", "database": "ok", "vector_store": "ok", "embedder": "ok"},
    }
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_redis_down_is_503_with_retry_after(settings: Settings, embedder: LocalModelEmbedder) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down, embedder=embedder)) as client:
        response = post_webhook(client, fixture_bytes("firecrawl", "v2_crawl_page.json"))
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert "redis" in response.json()["detail"]
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["checks"]["redis"].startswith("unavailable")
        assert client.get("/readyz").status_code == 503
        index = client.post("/api/index", json={"url": "https://a.example/", "markdown": "x"}, headers=AUTH)
        assert index.status_code == 503


def test_webhook_secret_not_configured(settings: Settings, embedder: LocalModelEmbedder) -> None:
    with TestClient(
        create_app(settings.model_copy(update={"firecrawl_webhook_secret": None}), embedder=embedder)
    ) as c:
        response = post_webhook(c, fixture_bytes("firecrawl", "v2_crawl_page.json"))
        assert response.status_code == 503
        assert "CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET" in response.json()["detail"]


def test_app_refuses_to_start_without_api_token(settings: Settings) -> None:
    from crawldex.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="CRAWLDEX_API_TOKEN"):
        create_app(settings.model_copy(update={"api_token": None}))


def test_a_page_that_changes_back_ends_with_the_last_version(client: TestClient) -> None:
    """A → B → A in three deliveries: the index holds A, not the B of the middle delivery."""
    url = "https://flip.example/page"
    for text in (
        "Version alpha mentions albatrosses.",
        "Version beta mentions bitterns.",
        "Version alpha mentions albatrosses.",
    ):
        response = post_webhook(client, page_body(url, text)).json()
        assert response["deduplicated_jobs"] == 0
        wait_for_job(client, response["job_ids"][0])
    hits = search(client, "version mentions", "keyword")["results"]
    assert [h["text"] for h in hits] == ["Version alpha mentions albatrosses."]


def test_streamed_oversize_json_body_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"url": "https://a.example/", "markdown": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}'

    response = client.post(
        "/api/index", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert "CRAWLDEX_MAX_BODY_BYTES" in response.json()["detail"]


def test_database_down(settings: Settings, embedder: LocalModelEmbedder) -> None:
    down = settings.model_copy(
        update={
            "database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none",
            "migrate_on_start": False,
            "firecrawl_url": "http://127.0.0.1:9/",  # reconciliation on; queued only, never run here
        }
    )
    with TestClient(create_app(down, embedder=embedder)) as client:
        # Nothing of a lifecycle event would be kept: refuse it, so the sender knows.
        lifecycle = post_webhook(client, fixture_bytes("firecrawl", "crawl_started.json"))
        assert lifecycle.status_code == 503
        assert lifecycle.headers["Retry-After"]
        # A crawl's end still queues its reconciliation (Redis is up), the crawl's net for lost pages;
        # only the event's row is lost.
        completed = post_webhook(client, fixture_bytes("firecrawl", "crawl_completed.json"))
        assert completed.status_code == 200, completed.text
        assert completed.json()["reconcile_job_id"]
        # Pages are queued in Redis, which is up: the delivery is accepted.
        assert post_webhook(client, fixture_bytes("firecrawl", "v2_crawl_page.json")).status_code == 202
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["checks"]["database"] == "unavailable"
        assert "127.0.0.1" not in health.text  # no hosts, users or driver messages in a public answer
        assert client.get("/readyz").status_code == 503
        test_index = client.post(
            "/api/test-index", json={"url": "https://a.example/", "markdown": "x"}, headers=AUTH
        )
        assert test_index.status_code == 503


def test_rq_info_sees_queues_and_workers(client: TestClient, redis_url: str) -> None:
    """Operators use RQ's own tools; crawldex keeps RQ's standard keys."""
    import subprocess
    import sys
    from pathlib import Path

    post_webhook(client, fixture_bytes("firecrawl", "v2_crawl_page.json"))
    rq = Path(sys.executable).parent / "rq"
    output = subprocess.run(
        [str(rq), "info", "-u", redis_url], capture_output=True, text=True, check=True
    ).stdout
    assert "indexing" in output
    assert ".embedded." in output  # the embedded consumer, registered as an RQ worker


def test_the_service_leaves_its_start_up_objects_out_of_garbage_collection(
    settings: Settings, embedder: LocalModelEmbedder
) -> None:
    gc.unfreeze()
    app = create_app(settings, embedder=embedder, freeze_heap=True)
    try:
        assert gc.get_freeze_count() == 0
        with TestClient(app) as test_client:
            # The services, the model and every import are built: frozen once the app has started.
            assert gc.get_freeze_count() > 0
            response = post_webhook(test_client, page_body("https://frozen.example/a", "# A\n\nFrozen."))
            assert response.status_code == 202
    finally:
        gc.unfreeze()  # the test process goes on building and dropping apps


def test_the_webhook_routes_are_matched_first_on_the_apps_own_router(settings: Settings) -> None:
    # Not behind an included router, which FastAPI matches twice a request (benchmarks/ANALYSIS.md).
    app = create_app(settings)
    own_paths = [getattr(route, "path", None) for route in app.router.routes]
    assert own_paths[:2] == [WEBHOOK, "/api/webhook/changedetection"]
