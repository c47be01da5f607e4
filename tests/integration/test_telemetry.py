"""Metrics, traces and operation metrics, observed from outside while real documents are indexed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import Settings
from ingest_api.app import create_app
from tests.conftest import fixture_bytes
from tests.integration.test_api import AUTH, post_webhook, search, wait_for_job

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """An in-memory exporter on the process's tracer provider (which can be set once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return _EXPORTER


@pytest.fixture
def client(
    settings: Settings, embedder: LocalModelEmbedder, spans: InMemorySpanExporter
) -> Iterator[TestClient]:
    spans.clear()
    with TestClient(
        create_app(settings.model_copy(update={"embedded_workers": True}), embedder=embedder)
    ) as c:
        yield c


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in spans if s.name == name]
    assert len(matching) == 1, [s.name for s in spans]
    return matching[0]


def test_one_trace_spans_webhook_queue_and_worker(client: TestClient, spans: InMemorySpanExporter) -> None:
    accepted = post_webhook(client, fixture_bytes("firecrawl", "v2_crawl_page.json"))
    job = wait_for_job(client, accepted.json()["job_ids"][0])
    assert job["status"] == "finished"
    finished = list(spans.get_finished_spans())
    webhook = _one(finished, "POST /api/webhook/firecrawl")
    job_span = _one(finished, "job indexing")
    assert webhook.kind is trace.SpanKind.SERVER
    assert job_span.kind is trace.SpanKind.CONSUMER
    assert webhook.context is not None
    assert job_span.context is not None
    trace_id = webhook.context.trace_id
    assert job_span.context.trace_id == trace_id
    by_id = {s.context.span_id: s for s in finished if s.context is not None}
    enqueue = _one(finished, "enqueue indexing")
    assert enqueue.kind is trace.SpanKind.PRODUCER
    assert job_span.parent is not None
    assert enqueue.context is not None
    assert job_span.parent.span_id == enqueue.context.span_id
    ancestors = []
    current: ReadableSpan | None = enqueue
    while current is not None and current.parent is not None:
        current = by_id.get(current.parent.span_id)
        ancestors.append(current)
    assert webhook in ancestors  # queued while the webhook was handled
    stages = {s.name: s for s in finished if s.name.startswith("stage ")}
    assert {
        "stage clean",
        "stage chunk",
        "stage embed",
        "stage upsert",  # the chunks and the stale tail, one write
        "stage record",
    } <= set(stages)
    for stage in stages.values():
        assert stage.context is not None
        assert stage.context.trace_id == trace_id
        assert stage.parent is not None
        assert stage.parent.span_id == job_span.context.span_id
    assert webhook.attributes is not None
    assert webhook.attributes["http.route"] == "/api/webhook/firecrawl"
    assert accepted.headers["X-Request-ID"]


def test_incoming_trace_context_is_continued(client: TestClient, spans: InMemorySpanExporter) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    client.get("/livez", headers={"traceparent": parent})
    span = _one(list(spans.get_finished_spans()), "GET /livez")
    assert span.context is not None
    assert format(span.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"


_TRACING_BEFORE_AND_AFTER_A_PROVIDER = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from crawldex.telemetry.tracing import extracted_context, inject_context, tracing_enabled

incoming = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
with extracted_context(incoming):
    before = [tracing_enabled(), inject_context()]
trace.set_tracer_provider(TracerProvider())
with extracted_context(incoming):
    after = [tracing_enabled(), inject_context()]
print(json.dumps([before, after]))
"""


def test_without_a_tracer_provider_jobs_carry_no_trace_context() -> None:
    # A process of its own: this one's tracer provider is installed by the `spans` fixture, once for good.
    out = subprocess.run(
        [sys.executable, "-c", _TRACING_BEFORE_AND_AFTER_A_PROVIDER],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    before, after = json.loads(out)
    assert before == [False, {}]
    assert after == [True, {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}]


def _samples(client: TestClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def test_metrics_cover_the_pipeline(client: TestClient) -> None:
    accepted = post_webhook(client, fixture_bytes("firecrawl", "v2_crawl_page.json")).json()
    wait_for_job(client, accepted["job_ids"][0])
    post_webhook(client, fixture_bytes("firecrawl", "v2_crawl_page.json"))  # a replay: deduplicated
    post_webhook(client, b"{}", signature="sha256=" + "0" * 64)  # rejected: signature
    search(client, "autoscaling", "hybrid")
    metrics = _samples(client)

    def value(name: str, **labels: str) -> float:
        return sum(
            v for found, v in metrics.get(name, []) if all(found.get(k) == x for k, x in labels.items())
        )

    assert (
        value("crawldex_http_requests_total", route="/api/webhook/firecrawl", method="POST", status="202")
        >= 2
    )
    assert value("crawldex_http_requests_total", route="/api/jobs/{job_id}", method="GET") >= 1
    assert value("crawldex_webhooks_received_total", source="firecrawl", event="crawl.page") >= 2
    assert value("crawldex_webhooks_rejected_total", source="firecrawl", reason="signature") >= 1
    assert value("crawldex_jobs_enqueued_total", queue="indexing") >= 1
    assert value("crawldex_jobs_deduplicated_total", queue="indexing") >= 1
    assert value("crawldex_jobs_started_total", queue="indexing") >= 1
    assert value("crawldex_jobs_finished_total", queue="indexing") >= 1
    assert value("crawldex_job_duration_seconds_count", queue="indexing", outcome="finished") >= 1
    for stage in ("clean", "chunk", "embed", "keyword", "upsert", "record"):  # delete: a removal's
        assert value("crawldex_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert value("crawldex_documents_processed_total", result="indexed") >= 1
    assert value("crawldex_chunks_indexed_total") >= 1
    assert value("crawldex_embedder_batch_size_count", embedder="local", purpose="document") >= 1
    assert value("crawldex_embedder_batch_size_count", embedder="local", purpose="query") >= 1
    assert value("crawldex_searches_total", mode="hybrid", outcome="ok") >= 1
    assert value("crawldex_search_duration_seconds_count", mode="hybrid") >= 1
    assert value("crawldex_queue_depth", queue="indexing") == 0
    assert value("crawldex_queue_oldest_job_age_seconds", queue="indexing") == 0
    assert value("crawldex_workers", queue="indexing") == 1
    assert "crawldex_jobs_running" in metrics
    assert "crawldex_jobs_failed_registry" in metrics
    # Bounded cardinality: no label ever carries a URL or a raw path.
    for name, samples in metrics.items():
        for labels, _ in samples:
            assert not any("://" in v or v.startswith("/api/jobs/index-") for v in labels.values()), (
                name,
                labels,
            )


def test_operation_metrics_api(client: TestClient) -> None:
    accepted = post_webhook(client, fixture_bytes("firecrawl", "v2_crawl_page.json")).json()
    wait_for_job(client, accepted["job_ids"][0])
    client.app.state.services.operations.flush()  # type: ignore[attr-defined]
    response = client.get("/api/metrics/operations", params={"hours": 1}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    summary = {(s["operation_type"], s["operation_name"]): s for s in body["summary"]}
    assert summary[("job", "indexing")]["count"] == 1
    assert summary[("job", "indexing")]["failures"] == 0
    embed = summary[("stage", "embed")]
    assert embed["count"] == 1
    assert 0 < embed["p50_ms"] <= embed["p95_ms"] <= embed["max_ms"]
    assert body["total"] == len(body["metrics"]) >= 7  # the job and its six stages
    row = next(r for r in body["metrics"] if r["operation_type"] == "job")
    assert row["job_id"] == accepted["job_ids"][0]
    assert row["crawl_id"] == "0d9f3c1e-5b7a-4c1d-9e2f-8a6b4c3d2e1f"
    assert row["document_url"] == "https://docs.example.com/guides/autoscaling/"

    by_crawl = client.get("/api/metrics/operations", params={"crawl_id": "nope"}, headers=AUTH).json()
    assert by_crawl["total"] == 0
    assert by_crawl["summary"] == []
    stages = client.get(
        "/api/metrics/operations", params={"operation_type": "stage", "limit": 2}, headers=AUTH
    )
    assert len(stages.json()["metrics"]) == 2
    assert (
        client.get("/api/metrics/operations", params={"success": "false"}, headers=AUTH).json()["total"] == 0
    )
    for bad in ({"hours": 0}, {"limit": 5000}, {"success": "maybe"}):
        assert client.get("/api/metrics/operations", params=bad, headers=AUTH).status_code == 422
    assert client.get("/api/metrics/operations").status_code == 401
