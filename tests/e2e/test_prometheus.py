"""A real Prometheus scrapes ingest-api and an index-worker while documents are indexed; every PromQL
expression of the dashboards and alerts must answer, and every one but the alerts must return data.

An alert's expression returns series only while the alert fires, so for alerts the test requires that
the query succeeds and that every series the alert reads has data. Both services run in TEI mode against
a server speaking TEI's HTTP API (tests/e2e/tei_contract_server.py), so TEI's panels get real traffic,
429s included; one page is made to fail, so the failure and retry panels do too.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib

from crawldex.webhooks.firecrawl import sign
from tests.conftest import API_TOKEN, WEBHOOK_SECRET
from tests.e2e.conftest import BIN, Deployment, Process, free_port, wait_until_healthy
from tests.observability import promql_expressions

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "crawldex" / "files" / "alerts" / "crawldex.rules.yaml"
SERIES = re.compile(r"\b((?:[a-z_]+:)?crawldex_[a-z0-9_:]+)")  # recorded names too, as queue:crawldex_...
TEI_CODE = re.compile(r'^crawldex_tei_responses_total\{code="(\d+)"\} [1-9]', re.MULTILINE)


def wait_http(process: Process, url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.name} exited:\n{process.output()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(
        f"{process.name} did not answer {url} within {timeout}s:\n{process.output()[-3000:]}"
    )


def webhook(client: httpx.Client, url: str, markdown: str, delivery: str) -> httpx.Response:
    body = json.dumps(
        {
            "success": True,
            "type": "crawl.page",
            "id": "crawl-prom",
            "webhookId": delivery,
            "data": [{"markdown": markdown, "metadata": {"url": url, "statusCode": 200, "title": "Page"}}],
        }
    ).encode()
    return client.post(
        "/api/webhook/firecrawl",
        content=body,
        headers={"X-Firecrawl-Signature": sign(WEBHOOK_SECRET, body), "Content-Type": "application/json"},
    )


def query(prometheus: str, expression: str) -> dict[str, Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=10)
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def redis_as_deployed(clean_redis: redis_lib.Redis) -> Iterator[redis_lib.Redis]:
    """The test Redis with a maxmemory, as the chart deploys it (the Redis-memory panel and rule divide by
    it), put back as it was afterwards."""
    previous = str(clean_redis.config_get("maxmemory")["maxmemory"])
    clean_redis.config_set("maxmemory", 2**30)
    yield clean_redis
    clean_redis.config_set("maxmemory", previous)


def test_every_dashboard_and_alert_expression_answers(
    deployment: Deployment, redis_as_deployed: redis_lib.Redis, tmp_path: Path
) -> None:
    tei_port, api_port, worker_metrics, prom_port = free_port(), free_port(), free_port(), free_port()
    tei = deployment.start(
        "tei",
        [
            str(BIN / "python"),
            "-m",
            "tests.e2e.tei_contract_server",
            "--port",
            str(tei_port),
            "--overload-every",
            "7",
            "--unavailable-every",
            "11",
        ],
    )
    wait_http(tei, f"http://127.0.0.1:{tei_port}/health")
    tei_env = {
        "CRAWLDEX_TEI_URL": f"http://127.0.0.1:{tei_port}",
        "CRAWLDEX_TEI_MAX_RETRIES": "3",
        "CRAWLDEX_INDEX_JOB_RETRIES": "1",
        "CRAWLDEX_INDEX_JOB_RETRY_INTERVALS": "[1]",
    }
    api = deployment.start_api(api_port, **tei_env)
    worker = deployment.start(
        "worker", [str(BIN / "crawldex-index-worker")], CRAWLDEX_METRICS_PORT=str(worker_metrics), **tei_env
    )
    base = f"http://127.0.0.1:{api_port}"
    wait_until_healthy(api, base)
    wait_http(worker, f"http://127.0.0.1:{worker_metrics}/metrics")

    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "crawldex-ingest-api",
                        "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}],
                    },
                    {
                        "job_name": "crawldex-index-worker",
                        "static_configs": [{"targets": [f"127.0.0.1:{worker_metrics}"]}],
                    },
                ],
            }
        )
    )
    prometheus = deployment.start(
        "prometheus",
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
    )
    prom = f"http://127.0.0.1:{prom_port}"
    wait_http(prometheus, f"{prom}/-/ready")

    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as client:
        job_ids = []
        for i in range(12):
            response = webhook(
                client, f"https://prom.example/page/{i}", f"# Page {i}\n\nHeron number {i} wades.", f"d-{i}"
            )
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_ids"][0])
        assert (
            webhook(client, "https://prom.example/page/0", "# Page 0\n\nHeron number 0 wades.", "d-0").json()[
                "deduplicated_jobs"
            ]
            == 1
        )
        failing = webhook(client, "https://prom.example/broken", "FAIL-EMBED this page", "d-fail").json()[
            "job_ids"
        ][0]
        assert (
            client.post(
                "/api/webhook/firecrawl", content=b"{}", headers={"X-Firecrawl-Signature": "sha256=00"}
            ).status_code
            == 401
        )
        for mode in ("hybrid", "semantic", "keyword"):
            assert client.post("/api/search", json={"query": "heron wades", "mode": mode}).status_code == 200
        assert client.post("/api/search", json={"query": "qqqzzzxxx", "mode": "keyword"}).status_code == 200
        assert client.post("/api/search", json={"query": "FAIL-EMBED", "mode": "semantic"}).status_code == 503
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            statuses = [client.get(f"/api/jobs/{j}").json()["status"] for j in [*job_ids, failing]]
            if all(s == "finished" for s in statuses[:-1]) and statuses[-1] == "failed":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"jobs did not settle: {statuses}\n{worker.output()[-3000:]}")
        # How many /embed calls the worker makes depends on how many jobs it batches into one, so the
        # server's every-7th 429 and every-11th 503 may not have come yet; more queries make sure they do.
        for _ in range(2 * 7 * 11):
            codes = set(TEI_CODE.findall(client.get("/metrics").text))
            if "429" in codes and any(code.startswith("5") for code in codes):
                break
            assert client.post("/api/search", json={"query": "heron", "mode": "semantic"}).status_code == 200
        else:
            raise AssertionError(f"TEI answered the API only with {sorted(codes)}")

    time.sleep(6)  # a few more scrapes and rule evaluations after the last event
    problems = []
    for where, expression in promql_expressions():
        answer = query(prom, expression)
        if answer.get("status") != "success":
            problems.append(f"{where}: error {answer.get('error')}")
            continue
        if " alert " in where:
            for series in sorted(set(SERIES.findall(expression))):
                if not query(prom, series)["data"]["result"]:
                    problems.append(f"{where}: reads {series}, which has no data")
        elif not answer["data"]["result"]:
            problems.append(f"{where}: no data for {expression}")
    assert not problems, "\n".join(problems)
