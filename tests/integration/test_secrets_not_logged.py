"""No secret reaches a log line, an exception or an HTTP answer.

Every secret setting gets a recognisable value (the URL passwords too: PostgreSQL's trust authentication
ignores its password, and Redis is a private server that requires one). Then the ingest-api runs with its
embedded consumers on them: start-up, /api with right and wrong tokens, both webhooks with right and wrong
credentials, index, rescrape and reconciliation jobs (the last two against a local Firecrawl that wants the API
key), errors; a rescrape-worker process starts with the same environment; and the app starts against a Redis
and a PostgreSQL that do not answer, with passwords in their URLs. Everything is logged at DEBUG, read from
every record (caplog at the root) and from the JSON lines `crawldex.logs` writes, and searched for the secrets
and for the wrong credentials clients presented.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import Settings
from crawldex.logs import configure_logging
from crawldex.webhooks.changedetection import TOKEN_HEADER
from crawldex.webhooks.firecrawl import SIGNATURE_HEADER, sign
from ingest_api.app import create_app
from tests.e2e.conftest import free_port
from tests.firecrawl_server import FirecrawlServer, serve_firecrawl
from tests.workers import wait_until

pytestmark = pytest.mark.slow

API_TOKEN = "api-token-SECRET-4d1c9e"
WEBHOOK_SECRET = "firecrawl-hmac-SECRET-7a2b5f"
CHANGEDETECTION_TOKEN = "changedetection-SECRET-93e0aa"
FIRECRAWL_API_KEY = "fc-SECRET-0b8d6e2f"
QDRANT_API_KEY = "qdrant-key-SECRET-51f7c3"
DATABASE_PASSWORD = "pg-password-SECRET-2c9e41"
REDIS_PASSWORD = "redis-password-SECRET-e6a03d"
# TEI has no token setting; a password in its URL is the one way to give it a credential. The app is handed the
# loaded model, so the URL is only configured and reported, never called.
TEI_URL = "http://crawldex:tei-password-SECRET-8c1f07@127.0.0.1:9"
SECRETS = (
    API_TOKEN,
    WEBHOOK_SECRET,
    CHANGEDETECTION_TOKEN,
    FIRECRAWL_API_KEY,
    QDRANT_API_KEY,
    DATABASE_PASSWORD,
    REDIS_PASSWORD,
    "tei-password-SECRET-8c1f07",
)
# Credentials a client got wrong are often a typo of the right one: they must not be written down either.
WRONG_CREDENTIALS = ("wrong-api-token-PRESENTED-1", "wrong-change-token-PRESENTED-2", "sha256=" + "ab" * 32)
MUST_NOT_APPEAR = SECRETS + WRONG_CREDENTIALS
REPO = Path(__file__).resolve().parents[2]
CRAWL_ID = "secrets-crawl-1"
TEST_CLIENT_LOGGER = "httpx2"


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own that refuses clients without REDIS_PASSWORD."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    port = free_port()
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--requirepass", REDIS_PASSWORD,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(tmp_path),
        "--logfile", str(tmp_path / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    try:
        wait_until(answers, "the private redis-server answering")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def with_password(database_url: str) -> str:
    return make_url(database_url).set(password=DATABASE_PASSWORD).render_as_string(hide_password=False)


@pytest.fixture
def firecrawl() -> Iterator[FirecrawlServer]:
    with serve_firecrawl(api_key=FIRECRAWL_API_KEY) as server:
        yield server


@pytest.fixture
def secret_settings(
    tmp_path: Path, fresh_database: str, redis_with_password: str, firecrawl: FirecrawlServer
) -> Settings:
    return Settings(
        api_token=API_TOKEN,
        firecrawl_webhook_secret=WEBHOOK_SECRET,
        changedetection_token=CHANGEDETECTION_TOKEN,
        firecrawl_api_key=FIRECRAWL_API_KEY,
        firecrawl_url=firecrawl.base_url,
        qdrant_api_key=QDRANT_API_KEY,
        tei_url=TEI_URL,
        redis_url=redis_with_password,
        database_url=with_password(fresh_database),
        data_dir=tmp_path / "data",
        qdrant_collection=f"secrets_{uuid.uuid4().hex[:8]}",
        embedded_workers=True,
        rate_limit_enabled=True,  # the limiter talks to Redis too
        reconcile_delay_seconds=1,
        rescrape_job_retries=0,
        index_job_retry_intervals=[1],
        log_level="DEBUG",
    )


class LogCapture:
    """Everything logged while active: the records (caplog) and the JSON lines of `crawldex.logs`."""

    def __init__(self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
        self.caplog = caplog
        self.stream = io.StringIO()
        self._root = logging.getLogger()
        self._saved = (list(self._root.handlers), self._root.level)
        monkeypatch.setattr(sys, "stderr", self.stream)
        # The production set-up: a JSON handler on the root. It replaces the root's handlers, so caplog's
        # are put back beside it.
        configure_logging("DEBUG", "json")
        self._root.handlers.extend(self._saved[0])
        caplog.set_level(logging.DEBUG)
        # The test's own HTTP client (Starlette's TestClient) logs every URL it requests, the token of a
        # changedetection.io notification sent in the query included: that is the sender's log, not the app's.
        self._client_logger = logging.getLogger(TEST_CLIENT_LOGGER)
        self._client_level = self._client_logger.level
        self._client_logger.setLevel(logging.WARNING)

    def close(self) -> None:
        self._root.handlers[:] = self._saved[0]
        self._root.setLevel(self._saved[1])
        self._client_logger.setLevel(self._client_level)

    def texts(self) -> Iterator[tuple[str, str]]:
        for record in self.caplog.records:
            yield f"record {record.name}: {record.msg!r}", record.getMessage()
            yield f"record {record.name} attributes", repr(vars(record))
            if record.exc_info is not None:
                yield f"record {record.name} exception", "".join(traceback.format_exception(*record.exc_info))
        yield "caplog text", self.caplog.text
        yield "JSON log lines", self.stream.getvalue()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[LogCapture]:
    capture = LogCapture(caplog, monkeypatch)
    try:
        yield capture
    finally:
        capture.close()


def assert_no_secret(texts: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> None:
    leaks = [
        (where, value, text[max(0, text.find(value) - 200) : text.find(value) + 100])
        for where, text in texts
        for value in MUST_NOT_APPEAR
        if value in text
    ]
    assert not leaks, "\n\n".join(f"{value!r} in {where}:\n…{context}…" for where, value, context in leaks)


class _Answer(Protocol):
    """What is read of an answer (Starlette's TestClient answers with httpx's or httpx2's Response)."""

    @property
    def request(self) -> Any: ...
    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def headers(self) -> Any: ...


AnswerT = TypeVar("AnswerT", bound=_Answer)


class Answers:
    """Every HTTP answer of the test, for the same search."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def keep(self, response: AnswerT) -> AnswerT:
        where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
        self.texts.append((f"{where} body", response.text))
        self.texts.append((f"{where} headers", repr(list(response.headers.items()))))
        return response


def page_delivery(n: int, url: str) -> bytes:
    return json.dumps(
        {
            "success": True,
            "type": "crawl.page",
            "id": CRAWL_ID,
            "webhookId": f"secrets-{n}",
            "data": [
                {
                    "markdown": f"# Page {n}\n\nSecrets stay out of the logs of page {n}.",
                    "metadata": {"url": url, "sourceURL": url, "statusCode": 200, "title": f"Page {n}"},
                }
            ],
        }
    ).encode()


def drive_api(client: TestClient, answers: Answers, firecrawl: FirecrawlServer) -> None:
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    wrong_auth = {"Authorization": f"Bearer {WRONG_CREDENTIALS[0]}"}
    get, post = client.get, client.post

    for path in ("/health", "/readyz", "/livez", "/metrics", "/openapi.json"):
        assert answers.keep(get(path)).status_code == 200, path

    # Firecrawl: signed pages (indexed by the embedded consumer), a wrong and a missing signature, bad bodies.
    firecrawl.add(CRAWL_ID, [json.loads(page_delivery(9, "https://secrets.example/recovered"))["data"][0]])
    job_ids: list[str] = []
    for n in range(2):
        body = page_delivery(n, f"https://secrets.example/page-{n}")
        response = answers.keep(post("/api/webhook/firecrawl", content=body, headers=_signed(body)))
        assert response.status_code == 202, response.text
        job_ids += response.json()["job_ids"]
    body = page_delivery(5, "https://secrets.example/page-5")
    wrong = {SIGNATURE_HEADER: WRONG_CREDENTIALS[2], "Content-Type": "application/json"}
    assert answers.keep(post("/api/webhook/firecrawl", content=body, headers=wrong)).status_code == 401
    assert answers.keep(post("/api/webhook/firecrawl", content=body)).status_code == 401
    for bad in (b"{not json", b"[1]", b'{"type": 5}'):
        assert answers.keep(
            post("/api/webhook/firecrawl", content=bad, headers=_signed(bad))
        ).status_code in (
            400,
            422,
        )
    # crawl.completed queues the reconciliation, which reads the results from Firecrawl with the API key.
    completed = json.dumps({"success": True, "type": "crawl.completed", "id": CRAWL_ID}).encode()
    response = answers.keep(post("/api/webhook/firecrawl", content=completed, headers=_signed(completed)))
    assert response.status_code == 200, response.text
    job_ids.append(response.json()["reconcile_job_id"])

    # changedetection.io: the token in the header and in the query, right and wrong; the rescrape job asks the
    # local Firecrawl to scrape, which it cannot (an error, logged, with the API key in the request).
    notification = {"url": "https://secrets.example/changed", "uuid": str(uuid.uuid4())}
    response = post(
        "/api/webhook/changedetection", json=notification, headers={TOKEN_HEADER: CHANGEDETECTION_TOKEN}
    )
    assert answers.keep(response).status_code == 202, response.text
    job_ids.append(response.json()["job_id"])
    response = post(f"/api/webhook/changedetection?token={CHANGEDETECTION_TOKEN}", json=notification)
    assert answers.keep(response).status_code == 202, response.text
    for credentials in ({"headers": {TOKEN_HEADER: WRONG_CREDENTIALS[1]}}, {"params": {"token": "x"}}):
        response = post("/api/webhook/changedetection", json=notification, **credentials)  # type: ignore[arg-type]
        assert answers.keep(response).status_code == 401
    response = post(
        "/api/webhook/changedetection", content=b"\xff", headers={TOKEN_HEADER: CHANGEDETECTION_TOKEN}
    )
    assert answers.keep(response).status_code == 400

    # The API: right, wrong and missing tokens; errors of every kind.
    search = {"query": "secrets stay out of the logs", "mode": "hybrid"}
    assert answers.keep(post("/api/search", json=search, headers=wrong_auth)).status_code == 401
    assert answers.keep(post("/api/search", json=search)).status_code == 401
    assert answers.keep(post("/api/search", json={"query": ""}, headers=auth)).status_code == 422
    assert answers.keep(post("/api/index", content=b"\xff", headers=auth)).status_code in (400, 422)
    index = {"url": "https://secrets.example/api", "markdown": "# API\n\nIndexed through the API."}
    response = answers.keep(post("/api/index", json=index, headers=auth))
    assert response.status_code == 202, response.text
    job_ids.append(response.json()["job_id"])
    assert answers.keep(post("/api/test-index", json=index, headers=auth)).status_code == 200
    for path in (
        "/api/jobs/no-such-job",
        "/api/change-events?limit=5",
        "/api/change-events/999999",
        f"/api/crawls/{CRAWL_ID}",
        "/api/crawls/unknown-crawl",
        "/api/metrics/operations?hours=1",
    ):
        assert answers.keep(get(path, headers=auth)).status_code in (200, 404), path
        assert answers.keep(get(path, headers=wrong_auth)).status_code == 401, path
    response = answers.keep(post("/api/crawls/not a crawl id/reconcile", headers=auth))
    assert response.status_code == 422

    def ended(job_id: str) -> bool:
        status = get(f"/api/jobs/{job_id}", headers=auth).json()["status"]
        return status in ("finished", "failed")

    for job_id in job_ids:
        wait_until(lambda job_id=job_id: ended(job_id), f"job {job_id} ending")  # type: ignore[misc]
        answers.keep(get(f"/api/jobs/{job_id}", headers=auth))
    assert answers.keep(post("/api/search", json=search, headers=auth)).json()["results"]
    assert any(path.startswith("/v2/crawl/") for path in firecrawl.requests)


def _signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(WEBHOOK_SECRET, body), "Content-Type": "application/json"}


def test_the_api_and_its_consumers_log_no_secret(
    secret_settings: Settings, embedder: LocalModelEmbedder, firecrawl: FirecrawlServer, logs: LogCapture
) -> None:
    answers = Answers()
    texts = [("settings repr", repr(secret_settings)), ("startup summary", secret_settings.startup_summary())]
    with TestClient(create_app(secret_settings, embedder=embedder)) as client:
        drive_api(client, answers, firecrawl)
    assert_no_secret([*texts, *answers.texts, *logs.texts()])
    logged = logs.stream.getvalue()
    # The capture saw the run: the start-up summary (passwords masked), the jobs, the refused requests.
    assert "ingest-api connects to redis=redis://:***@127.0.0.1" in logged
    assert "postgresql+asyncpg://postgres:***@127.0.0.1" in logged
    assert "embedder=http://crawldex:***@127.0.0.1:9" in logged
    assert '"level": "debug"' in logged
    assert len(logs.caplog.records) > 20


def test_unreachable_dependencies_with_passwords_in_their_urls_log_no_secret(
    secret_settings: Settings, embedder: LocalModelEmbedder, logs: LogCapture
) -> None:
    closed = free_port()  # nothing listens there
    unreachable = secret_settings.model_copy(
        update={
            "redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed}/0",
            "database_url": f"postgresql+asyncpg://crawldex:{DATABASE_PASSWORD}@127.0.0.1:{closed}/crawldex",
            "embedded_workers": False,
        }
    )
    failures: list[tuple[str, str]] = []
    # Whatever it raises, its text is checked.
    with pytest.raises(Exception) as started, TestClient(create_app(unreachable, embedder=embedder)):  # noqa: PT011
        pass
    failures.append(("start-up error", "".join(traceback.format_exception(started.value))))
    failures.append(("start-up error repr", repr(started.value)))
    # The database is up but Redis is not: the app starts (on the same embedded store, which the failed start
    # released), and requests that need Redis answer 503.
    redis_down = secret_settings.model_copy(
        update={
            "redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed}/0",
            "embedded_workers": False,
        }
    )
    answers = Answers()
    with TestClient(create_app(redis_down, embedder=embedder)) as client:
        body = page_delivery(1, "https://secrets.example/unqueued")
        assert (
            answers.keep(
                client.post("/api/webhook/firecrawl", content=body, headers=_signed(body))
            ).status_code
            == 503
        )
        index = {"url": "https://secrets.example/api", "markdown": "# API"}
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        assert answers.keep(client.post("/api/index", json=index, headers=auth)).status_code == 503
        assert answers.keep(client.get("/api/jobs/some-job", headers=auth)).status_code == 503
        assert answers.keep(client.get("/health")).status_code == 503
        assert answers.keep(client.get("/readyz")).status_code == 503
    assert_no_secret([*failures, *answers.texts, *logs.texts()])
    assert "redis" in logs.stream.getvalue()  # the outage was logged, without the password


def test_a_worker_process_logs_no_secret(secret_settings: Settings) -> None:
    """The rescrape-worker as deployed: its own process, JSON logs on stderr at DEBUG, one job to run."""
    settings = secret_settings
    connection = redis.Redis.from_url(settings.redis_url)
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("CRAWLDEX_")},
        "CRAWLDEX_API_TOKEN": API_TOKEN,
        "CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CRAWLDEX_CHANGEDETECTION_TOKEN": CHANGEDETECTION_TOKEN,
        "CRAWLDEX_FIRECRAWL_API_KEY": FIRECRAWL_API_KEY,
        "CRAWLDEX_FIRECRAWL_URL": settings.firecrawl_url or "",
        "CRAWLDEX_QDRANT_API_KEY": QDRANT_API_KEY,
        "CRAWLDEX_REDIS_URL": settings.redis_url,
        "CRAWLDEX_DATABASE_URL": settings.database_url or "",
        "CRAWLDEX_DATA_DIR": str(settings.data_dir),
        "CRAWLDEX_LOG_LEVEL": "DEBUG",
        "CRAWLDEX_LOG_FORMAT": "json",
        "CRAWLDEX_METRICS_PORT": "0",
        "CRAWLDEX_RESCRAPE_JOB_RETRIES": "0",
    }
    # One reconciliation for the worker to run: it reads the crawl's results from Firecrawl with the key.
    from crawldex.adapters.queue import JobQueue

    JobQueue(connection, settings).enqueue_reconcile("worker-crawl", "crawl", rerun=True)
    worker = REPO / ".venv" / "bin" / "crawldex-rescrape-worker"
    finished = subprocess.run(
        [str(worker), "--burst"], env=environment, capture_output=True, text=True, timeout=240, check=False
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-4000:]
    assert "reconcile" in output, output[-4000:]  # the job ran
    assert_no_secret([("worker output", output)])
