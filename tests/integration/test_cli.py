"""The operator CLI (`crawldex`) against real Redis and PostgreSQL, the embedded store and the real model.

Commands run in-process through `main([...])` (reading CRAWLDEX_* from the environment, as the installed
script does) and, for a few, as the installed `crawldex` script in a subprocess. Jobs are run by the
project's own worker (the embedded consumer) while `running_workers` is open.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.adapters.queue import JobQueue, connect_redis
from crawldex.adapters.queue_admin import QueueAdmin
from crawldex.cli import main
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings
from crawldex.db.change_events import ChangeEventRecord, ChangeEventRepository
from crawldex.db.database import Database
from crawldex.db.repository import DocumentRecord, DocumentRepository
from crawldex.models import PageDocument, utc_now
from crawldex.urls import canonicalize_url, document_id
from tests.conftest import fixture_json
from tests.firecrawl_server import serve_firecrawl
from tests.pages import PageSite, serve_pages
from tests.workers import running_workers, wait_until

T = TypeVar("T")
# Settings the commands read from the environment, as the installed script would.
EXPORTED = (
    "redis_url",
    "database_url",
    "data_dir",
    "qdrant_collection",
    "fetch_allowed_hosts",
    "index_job_retries",
    "index_job_retry_intervals",
    "rescrape_job_retries",
    "rescrape_job_retry_intervals",
    "metrics_port",
)
SCRIPT = Path(sys.executable).with_name("crawldex")

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "fetch_allowed_hosts": ["127.0.0.1"],
            "rescrape_job_retries": 1,
            "rescrape_job_retry_intervals": [1],
            "index_job_retries": 1,
            "index_job_retry_intervals": [1],
            "metrics_port": 0,
        }
    )


def environment_of(settings: Settings) -> dict[str, str]:
    env = {}
    for name in EXPORTED:
        value = getattr(settings, name)
        env[f"CRAWLDEX_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


@pytest.fixture
def cli(cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs `crawldex ARGS...` in this process: (exit code, stdout, stderr)."""
    for name in list(os.environ):
        if name.startswith("CRAWLDEX_"):
            monkeypatch.delenv(name)
    for name, value in environment_of(cli_settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def site() -> Iterator[PageSite]:
    with serve_pages() as pages:
        yield pages


@pytest.fixture
def admin(cli_settings: Settings) -> Iterator[QueueAdmin]:
    connection = connect_redis(cli_settings.redis_url)
    yield QueueAdmin(connection)
    connection.close()


def in_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def run() -> T:
        database = Database.connect(settings.effective_database_url)
        try:
            return await work(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def change_event(settings: Settings, event_id: int) -> ChangeEventRecord:
    event = in_database(settings, lambda db: ChangeEventRepository(db).get(event_id))
    assert event is not None
    return event


def fetch_job(settings: Settings, job_id: str) -> Job:
    return Job.fetch(job_id, connection=connect_redis(settings.redis_url), serializer=JSONSerializer)


def queued_jobs(settings: Settings, queue: str) -> list[Job]:
    connection = connect_redis(settings.redis_url)
    return Queue(queue, connection=connection, serializer=JSONSerializer).get_jobs()


def status_json(cli: Cli) -> dict[str, Any]:
    code, out, _ = cli("status", "--json")
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    return document


def opened_event_id(out: str) -> int:
    match = re.search(r"change event (\d+) opened", out)
    assert match, out
    return int(match.group(1))


def save_documents(settings: Settings, rows: list[tuple[str, str]]) -> None:
    """Document rows as the index worker writes them: (url, status)."""

    async def save(db: Database) -> None:
        repository = DocumentRepository(db)
        for url, status in rows:
            canonical = canonicalize_url(url)
            await repository.save(
                DocumentRecord(
                    doc_id=document_id(canonical),
                    canonical_url=canonical,
                    url=url,
                    title=None,
                    content_hash="",
                    chunk_count=0,
                    status=status,
                    crawl_id=None,
                    indexed_at=utc_now(),
                    source_received_at=utc_now(),
                )
            )

    in_database(settings, save)


# ---- the installed script ----


def test_the_installed_script_helps_and_reports_status(cli_settings: Settings) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CRAWLDEX_")},
        **environment_of(cli_settings),
    }
    helped = subprocess.run(
        [SCRIPT, "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert helped.returncode == 0, helped.stderr
    for command in ("status", "requeue", "import", "search", "reindex", "purge", "reconcile"):
        assert command in helped.stdout
    assert "exit codes" in helped.stdout
    import_help = subprocess.run(
        [SCRIPT, "import", "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert import_help.returncode == 0
    assert "--base-url" in import_help.stdout
    assert "front matter" in import_help.stdout

    connection = connect_redis(cli_settings.redis_url)
    queue = JobQueue(connection, cli_settings)
    for name in ("one", "two"):
        queue.enqueue_index(PageDocument(url=f"https://script.example/{name}", markdown=f"# {name}"))
    connection.close()
    status = subprocess.run(
        [SCRIPT, "status", "--json"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["queues"]
    assert counts[QUEUE_INDEXING]["queued"] == 2
    assert counts[QUEUE_RESCRAPE] == {
        "queued": 0,
        "started": 0,
        "abandoned": 0,
        "scheduled": 0,
        "failed": 0,
        "finished": 0,
    }

    down = subprocess.run(
        [SCRIPT, "status"],
        capture_output=True,
        text=True,
        env={**env, "CRAWLDEX_REDIS_URL": "redis://127.0.0.1:1/0"},
        timeout=60,
        check=False,
    )
    assert down.returncode == 1
    assert down.stderr.startswith("crawldex: error: redis is unavailable")
    assert len(down.stderr.strip().splitlines()) == 1
    assert "Traceback" not in down.stderr


# ---- status and requeue ----


def test_status_and_requeue_by_id_restores_the_retry_policy(
    cli: Cli, cli_settings: Settings, site: PageSite, embedder: LocalModelEmbedder
) -> None:
    url = site.set("/flaky", site.html("Flaky", "<p>Back soon.</p>"), status=500)
    code, out, _ = cli("reindex", "--url", url)
    assert code == 0, out
    event_id = opened_event_id(out)
    job_id = f"rescrape-{event_id}"
    original_intervals = fetch_job(cli_settings, job_id).retry_intervals
    assert status_json(cli)["queues"][QUEUE_RESCRAPE]["queued"] == 1

    with running_workers(cli_settings, embedder):
        workers = status_json(cli)["workers"]
        assert len(workers) == 1
        assert set(workers[0]["queues"]) == {QUEUE_INDEXING, QUEUE_RESCRAPE}
        assert workers[0]["last_heartbeat"]
        # One try and one retry, both answered 500: the job fails for good, and so does its change event.
        wait_until(lambda: fetch_job(cli_settings, job_id).get_status() == "failed", "the rescrape failed")
    assert site.hits["/flaky"] == 2

    status = status_json(cli)
    assert status["workers"] == []
    assert status["queues"][QUEUE_RESCRAPE]["failed"] == 1
    assert status["queues"][QUEUE_RESCRAPE]["queued"] == 0
    failed_event = change_event(cli_settings, event_id)
    assert failed_event.status == "failed"
    assert failed_event.error is not None
    assert "500" in failed_event.error

    code, out, _ = cli("status", "--failed")
    assert code == 0
    assert job_id in out
    assert "answered HTTP 500" in out

    code, out, err = cli("requeue", "--job-id", job_id)
    assert code == 0, err
    assert f"requeued {job_id}" in out
    assert "requeued 1 of 1 failed jobs" in out
    requeued = fetch_job(cli_settings, job_id)
    assert requeued.get_status() == "queued"
    assert requeued.retries_left == 1  # CRAWLDEX_RESCRAPE_JOB_RETRIES again, not the 0 its last failure left
    assert requeued.retry_intervals == original_intervals
    reopened = change_event(cli_settings, event_id)
    assert reopened.status == "queued"
    assert reopened.error is None
    counts = status_json(cli)["queues"][QUEUE_RESCRAPE]
    assert (counts["queued"], counts["failed"]) == (1, 0)

    site.set("/flaky", site.html("Flaky", "<p>The flaky page answers again with tea recipes.</p>"))
    with running_workers(cli_settings, embedder):
        wait_until(
            lambda: change_event(cli_settings, event_id).status == "indexed", "the change event indexed"
        )
    assert status_json(cli)["queues"][QUEUE_INDEXING]["finished"] == 1

    code, _, err = cli("requeue", "--job-id", "rescrape-999999")
    assert code == 1
    assert "not requeued rescrape-999999: not a failed job" in err


def test_requeue_by_queue(
    cli: Cli, cli_settings: Settings, site: PageSite, embedder: LocalModelEmbedder, admin: QueueAdmin
) -> None:
    # 127.0.0.2 is loopback but not in CRAWLDEX_FETCH_ALLOWED_HOSTS: the SSRF guard fails it at once, for good.
    port = site.base_url.rsplit(":", 1)[1]
    event_ids = []
    for name in ("first", "second"):
        code, out, _ = cli("reindex", "--url", f"http://127.0.0.2:{port}/{name}")
        assert code == 0
        event_ids.append(opened_event_id(out))
    with running_workers(cli_settings, embedder):
        wait_until(lambda: admin.counts(QUEUE_RESCRAPE).failed == 2, "both rescrapes failed")

    code, out, _ = cli("requeue", "--queue", QUEUE_INDEXING)
    assert code == 0
    assert "no failed jobs in indexing" in out

    code, out, _ = cli("requeue", "--queue", QUEUE_RESCRAPE, "--dry-run")
    assert code == 0
    assert "would requeue 2 of 2 failed jobs" in out
    assert admin.counts(QUEUE_RESCRAPE).failed == 2
    assert all(change_event(cli_settings, event_id).status == "failed" for event_id in event_ids)

    code, out, _ = cli("requeue", "--queue", QUEUE_RESCRAPE)
    assert code == 0
    assert "requeued 2 of 2 failed jobs" in out
    counts = admin.counts(QUEUE_RESCRAPE)
    assert (counts.queued, counts.failed) == (2, 0)
    for event_id in event_ids:
        assert change_event(cli_settings, event_id).status == "queued"
        assert fetch_job(cli_settings, f"rescrape-{event_id}").retries_left == 1

    code, out, _ = cli("requeue", "--all")
    assert code == 0
    assert "no failed jobs" in out
    code, _, err = cli("requeue", "--all", "--job-id", "x")
    assert code == 2
    assert "not both" in err


# ---- import ----


def test_import_jsonl_reports_bad_lines_and_deduplicates(
    cli: Cli, cli_settings: Settings, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"url": "https://jsonl.example/a", "markdown": "# A\n\nApples grow on trees."}),
        '{"url": "https://jsonl.example/broken", "markdown": ',
        json.dumps(
            {"url": "https://jsonl.example/b", "markdown": "# B\n\nBananas.", "title": "B", "language": "en"}
        ),
        json.dumps({"url": "mailto:someone@example.com", "markdown": "mail"}),
        "",
        json.dumps({"url": "https://jsonl.example/c"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"url": "https://jsonl.example/d", "markdown": "# D\n\nDates.", "crawl_id": "own"}),
    ]
    path = tmp_path / "pages.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    code, out, _ = cli("import", str(path), "--crawl-id", "bulk-1")
    assert code == 1  # some lines were skipped
    assert "read 7: queued 3, deduplicated 0, skipped 4, failed 0" in out
    assert "line 2: not JSON" in out
    assert "line 4: url: url must be http or https" in out
    assert "line 6: markdown: Field required" in out
    assert "line 7: not a JSON object but list" in out

    jobs = queued_jobs(cli_settings, QUEUE_INDEXING)
    pages = {job.args[0]["url"]: job.args[0] for job in jobs}
    assert sorted(pages) == ["https://jsonl.example/a", "https://jsonl.example/b", "https://jsonl.example/d"]
    assert pages["https://jsonl.example/b"]["title"] == "B"
    assert pages["https://jsonl.example/a"]["crawl_id"] == "bulk-1"
    assert pages["https://jsonl.example/d"]["crawl_id"] == "own"
    assert {page["source"] for page in pages.values()} == {"import"}

    # The same source again is the same delivery: no new jobs.
    code, out, _ = cli("import", str(path), "--crawl-id", "bulk-1", "--quiet")
    assert "read 7: queued 0, deduplicated 3, skipped 4, failed 0" in out
    assert status_json(cli)["queues"][QUEUE_INDEXING]["queued"] == 3
    # A new delivery id queues them again.
    code, out, _ = cli("import", str(path), "--delivery-id", "again")
    assert "queued 3, deduplicated 0" in out


@pytest.mark.slow
def test_import_markdown_directory_waits_then_search_finds_it(
    cli: Cli, cli_settings: Settings, tmp_path: Path, embedder: LocalModelEmbedder
) -> None:
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / ".drafts").mkdir()
    (docs / "index.md").write_text("# Welcome\n\nThe lighthouse keeper logs every passing ship.\n")
    (docs / "guide" / "setup.md").write_text(
        "---\nurl: https://docs.example.com/custom/setup\ntitle: 'Setup guide'\nlanguage: en\n---\n"
        "Install the brass telescope before dusk.\n"
    )
    (docs / "guide" / "tides.md").write_text("# Tides\n\nSpring tides follow the full moon.\n")
    (docs / ".drafts" / "secret.md").write_text("# Draft\n\nnot for the index\n")
    (docs / "notes.txt").write_text("not markdown")

    code, out, _ = cli("import", str(docs))
    assert code == 1  # without --base-url, two files have no URL
    assert "guide/tides.md: no url" in out
    assert "index.md: no url" in out
    assert "queued 1" in out

    with running_workers(cli_settings, embedder):
        code, out, err = cli("import", str(docs), "--base-url", "https://docs.example.com/", "--wait", "-q")
    assert code == 0, out + err
    assert "read 3: queued 2, deduplicated 1, skipped 0, failed 0" in out
    assert "jobs: indexed 3" in out

    code, out, err = cli("search", "brass telescope", "--mode", "keyword", "--json")
    assert code == 0, err
    top = json.loads(out)["results"][0]
    assert top["url"] == "https://docs.example.com/custom/setup"
    assert top["title"] == "Setup guide"
    code, out, _ = cli("search", "when do spring tides come", "--limit", "1")
    assert code == 0
    assert "https://docs.example.com/guide/tides  Tides" in out
    assert "1 of " in out
    assert "hybrid search" in out
    code, out, _ = cli(
        "search", "lighthouse ship log", "--mode", "semantic", "--domain", "docs.example.com", "--json"
    )
    assert json.loads(out)["results"][0]["url"] == "https://docs.example.com/"
    for group_by in ("page", "chunk"):
        code, out, err = cli("search", "tides", "--group-by", group_by, "--json")
        assert code == 0, err
        urls = [r["url"] for r in json.loads(out)["results"]]
        assert "https://docs.example.com/guide/tides" in urls
        assert group_by == "chunk" or len(urls) == len(set(urls))
    code, _, err = cli("search", "anything", "--group-by", "site")
    assert code == 2
    assert "group-by" in err
    code, _, err = cli("search", "anything", "--limit", "500")
    assert code == 2
    assert "limit" in err


def sitemap_xml(urls: list[str], *, index: bool = False) -> str:
    element, item = ("sitemapindex", "sitemap") if index else ("urlset", "url")
    entries = "".join(f"<{item}><loc>{url}</loc></{item}>" for url in urls)
    return f'<?xml version="1.0" encoding="UTF-8"?><{element} xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</{element}>'


def test_import_sitemap_fetches_each_page(
    cli: Cli, cli_settings: Settings, site: PageSite, tmp_path: Path
) -> None:
    one = site.set("/pages/one", site.html("One", "<h1>One</h1><p>The first page is about otters.</p>"))
    two = site.set("/pages/two", site.html("Two", "<p>The second page is about herons.</p>"))
    gone = site.base_url + "/pages/gone"  # 404
    blocked = site.base_url.replace("127.0.0.1", "127.0.0.2") + "/pages/one"  # not an allowed host
    sitemap = tmp_path / "sitemap.xml"
    sitemap.write_text(sitemap_xml([one, two, gone, "ftp://files.example/x", blocked, one + "#again"]))

    code, out, _ = cli("import", str(sitemap), "--crawl-id", "sitemap-1")
    assert code == 1
    assert "read 6: queued 2, deduplicated 1, skipped 1, failed 2" in out
    assert "ftp://files.example/x" in out
    assert f"{gone}: answered HTTP 404" in out
    assert "127.0.0.2" in out
    assert "loopback" in out
    pages = {job.args[0]["url"]: job.args[0] for job in queued_jobs(cli_settings, QUEUE_INDEXING)}
    assert sorted(pages) == [one, two]
    assert "otters" in pages[one]["markdown"]
    assert pages[one]["title"] == "One"
    assert pages[two]["crawl_id"] == "sitemap-1"
    assert site.hits["/pages/one"] == 1  # listed twice, fetched once

    # A sitemap index on a server, listing a gzipped sitemap: downloaded under the same guard.
    site.set(
        "/sitemap.xml",
        sitemap_xml([site.base_url + "/pages.xml.gz"], index=True),
        content_type="application/xml",
    )
    site.set(
        "/pages.xml.gz", gzip.compress(sitemap_xml([one, two]).encode()), content_type="application/gzip"
    )
    code, out, err = cli("import", site.base_url + "/sitemap.xml")
    assert "2 sitemap(s): 2 pages to fetch" in err
    assert "read 2: queued 2, deduplicated 0, skipped 0, failed 0" in out, out
    assert code == 0

    code, _, err = cli("import", site.base_url + "/pages/one")
    assert code == 1
    assert "cannot download the sitemap" in err
    assert "text/html" in err


# ---- reindex and purge ----


def test_reindex_url_opens_an_operator_change_event_and_a_rescrape(
    cli: Cli, cli_settings: Settings, admin: QueueAdmin
) -> None:
    url = "https://reindex.example/pricing"
    code, out, err = cli("reindex", "--url", url)
    assert code == 0
    event_id = opened_event_id(out)
    assert "not indexed yet" in err
    event = change_event(cli_settings, event_id)
    assert (event.source, event.status, event.url) == ("operator", "queued", url)
    assert event.rescrape_job_id == f"rescrape-{event_id}"
    job = fetch_job(cli_settings, f"rescrape-{event_id}")
    assert (job.origin, job.func_name, job.args) == (
        QUEUE_RESCRAPE,
        "crawldex.jobs.rescrape_page",
        [event_id],
    )
    assert job.get_status() == "queued"

    # A second request for the same page (the same canonical URL) while the first still waits joins it.
    code, out, _ = cli("reindex", "--url", "HTTPS://Reindex.Example/pricing#plans")
    assert code == 0
    assert f"joined change event {event_id}" in out
    assert admin.counts(QUEUE_RESCRAPE).queued == 1


def test_reindex_all_walks_the_indexed_documents(cli: Cli, cli_settings: Settings, admin: QueueAdmin) -> None:
    save_documents(
        cli_settings,
        [
            ("https://all.example/a", "indexed"),
            ("https://all.example/b", "indexed"),
            ("https://all.example/c", "empty"),
            ("https://all.example/gone", "gone"),
        ],
    )
    code, out, _ = cli("reindex", "--url", "https://all.example/b")
    assert code == 0
    code, out, _ = cli("reindex", "--all", "--batch-size", "2")
    assert code == 0
    assert "reindex: 3 pages: 2 change events opened, 1 joined a waiting one" in out

    async def operator_events(db: Database) -> list[ChangeEventRecord]:
        events, _ = await ChangeEventRepository(db).list(
            status=None, canonical_url=None, since=None, limit=100, offset=0
        )
        return events

    events = in_database(cli_settings, operator_events)
    assert sorted(e.url for e in events) == [
        "https://all.example/a",
        "https://all.example/b",
        "https://all.example/c",
    ]
    assert {e.source for e in events} == {"operator"}
    assert admin.counts(QUEUE_RESCRAPE).queued == 3

    code, _, err = cli("reindex", "--url", "https://all.example/a", "--all")
    assert code == 2
    assert "not allowed with argument" in err


def test_purge_queues_the_removal_and_waits_for_it(
    cli: Cli, cli_settings: Settings, tmp_path: Path, embedder: LocalModelEmbedder
) -> None:
    save_documents(cli_settings, [("https://purge.example/old", "indexed")])
    code, out, _ = cli("purge", "--url", "https://PURGE.example/old")
    assert code == 0
    job_id = re.search(r"removal job (remove-\d+) queued \(change event (\d+)\)", out)
    assert job_id, out
    job = fetch_job(cli_settings, job_id.group(1))
    assert (job.origin, job.func_name) == (QUEUE_INDEXING, "crawldex.jobs.remove_page")
    assert job.args[:2] == ["https://purge.example/old", int(job_id.group(2))]
    event = change_event(cli_settings, int(job_id.group(2)))
    assert (event.source, event.status) == ("operator", "indexing")

    page = tmp_path / "page.jsonl"
    page.write_text(
        json.dumps({"url": "https://purge.example/new", "markdown": "# New\n\nWalruses nap on ice."})
    )
    with running_workers(cli_settings, embedder):
        code, out, _ = cli("import", str(page), "--wait")
        assert code == 0
        assert "jobs: indexed 1" in out
        code, out, err = cli("purge", "--url", "https://purge.example/new", "--wait")
        assert code == 0, err
        assert "removed https://purge.example/new from the index" in out
    assert change_event(cli_settings, int(job_id.group(2))).status == "gone"
    document = in_database(
        cli_settings,
        lambda db: DocumentRepository(db).get(document_id("https://purge.example/new")),
    )
    assert document is not None
    assert document.status == "gone"
    assert document.chunk_count == 0

    code, out, _ = cli("purge", "--url", "https://purge.example/new")
    assert code == 0
    assert "already removed" in out
    code, _, err = cli("purge", "--url", "https://purge.example/never")
    assert code == 1
    assert "is not in the index" in err


# ---- failures ----


def test_expected_failures_are_one_line_with_their_exit_code(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, _, err = cli("import", str(tmp_path / "missing.jsonl"))
    assert code == 2
    assert err.strip() == f"crawldex: error: {tmp_path / 'missing.jsonl'}: no such file or directory"

    code, _, err = cli("reindex", "--url", "ftp://example.com/x")
    assert code == 2
    assert "must be http or https" in err

    code, _, err = cli("requeue")
    assert code == 2

    monkeypatch.setenv("CRAWLDEX_SEARCH_FUSION", "loudest")
    code, _, err = cli("status")
    assert code == 2
    assert err.startswith("crawldex: error: configuration error: CRAWLDEX_SEARCH_FUSION")
    monkeypatch.delenv("CRAWLDEX_SEARCH_FUSION")

    monkeypatch.setenv("CRAWLDEX_DATABASE_URL", f"postgresql://postgres@127.0.0.1:1/{uuid.uuid4().hex}")
    code, _, err = cli("reindex", "--url", "https://down.example/")
    assert code == 1
    assert err.startswith("crawldex: error: database is unavailable")
    assert len(err.strip().splitlines()) == 1

    page = tmp_path / "page.jsonl"
    page.write_text(json.dumps({"url": "https://down.example/", "markdown": "text"}) + "\n")
    monkeypatch.setenv("CRAWLDEX_REDIS_URL", "redis://127.0.0.1:1/0")
    code, out, err = cli("import", str(page))
    assert code == 1
    assert "read 1: queued 0" in out
    assert err.startswith("crawldex: error: redis is unavailable, the import stopped after queueing 0 pages")


# ---- reconcile ----

RECONCILED_CRAWL = "3f2b6d1e-8c4a-4b7e-9d2f-1a5c7e9b0d34"


def test_reconcile_indexes_the_pages_whose_webhooks_were_lost(
    cli: Cli, cli_settings: Settings, embedder: LocalModelEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = [
        document
        for skip in (0, 3, 6)
        for document in fixture_json("firecrawl_crawl", f"crawl_skip_{skip}.json")["body"]["data"]
    ]
    with serve_firecrawl(api_key="fc-cli-key") as firecrawl:
        firecrawl.add(RECONCILED_CRAWL, documents)
        monkeypatch.setenv("CRAWLDEX_FIRECRAWL_URL", firecrawl.base_url)
        monkeypatch.setenv("CRAWLDEX_FIRECRAWL_API_KEY", "fc-cli-key")
        with running_workers(cli_settings, embedder):
            code, out, err = cli("reconcile", RECONCILED_CRAWL, "--wait", "--quiet")
            assert code == 0, err
            listed = len(documents)
            assert f"crawl {RECONCILED_CRAWL}: succeeded" in out
            assert f"listed {listed}: 0 had arrived" in out
            recovered = int(re.search(r"(\d+) recovered and queued", out).group(1))  # type: ignore[union-attr]
            failed = int(re.search(r"(\d+) failed at Firecrawl", out).group(1))  # type: ignore[union-attr]
            assert recovered + failed == listed
            assert recovered > 0
            assert f"indexed {recovered}" in out  # --wait: each recovered page's index job ended indexed

            code, out, _ = cli("reconcile", RECONCILED_CRAWL, "--json")  # again: nothing is queued twice
            assert code == 0
            report = json.loads(out)
            assert report["pages_known"] == listed
            assert report["pages_recovered"] == 0

        code, out, _ = cli("reconcile", RECONCILED_CRAWL, "--queue")
        assert code == 0
        assert f"job reconcile-crawl-{RECONCILED_CRAWL}" in out

        code, _, err = cli("reconcile", "0d9f3c1e-0000-4c1d-9e2f-8a6b4c3d2e1f")  # Firecrawl does not know it
        assert code == 1
        assert err.startswith(
            "crawldex: error: reconciliation of crawl 0d9f3c1e-0000-4c1d-9e2f-8a6b4c3d2e1f failed"
        )
        assert "404" in err

        code, _, err = cli("reconcile", "../../etc/passwd")
        assert code == 2
        assert "CRAWL_ID" in err

    monkeypatch.delenv("CRAWLDEX_FIRECRAWL_URL")
    code, _, err = cli("reconcile", RECONCILED_CRAWL)
    assert code == 2
    assert err.startswith("crawldex: error: configuration error:")
    assert "CRAWLDEX_FIRECRAWL_URL" in err
