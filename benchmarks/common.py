"""What every benchmark shares: result rows, the data set, fresh settings, a null embedder, timing helpers."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from crawldex.adapters.embedder import Embedder, EmbedderInfo, Vector
from crawldex.adapters.local_model import BUNDLED_MODEL_ID, LocalModelEmbedder
from crawldex.config import QUEUE_INDEXING, Settings
from crawldex.heap import freeze_startup_objects
from crawldex.jobs import JobLoop, WorkerRuntime, install_runtime
from crawldex.services import Services
from crawldex.worker import CrawldexWorker, worker_name

REPO_ROOT = Path(__file__).resolve().parent.parent
SCIFACT = REPO_ROOT.parent / "shared" / "data" / "scifact-subset"
REDIS_URL = os.environ.get("CRAWLDEX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
ADMIN_DATABASE = os.environ.get(
    "CRAWLDEX_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Row:
    """One line of the table: a figure, its side-by-side limit, the ratio and the target."""

    benchmark: str
    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    passed: bool | None = None  # None: informational, no target


@dataclass
class Report:
    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("pass" if passed else "MISS")


# ---- data ----


@dataclass(frozen=True)
class SciFact:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_scifact() -> SciFact:
    if not (SCIFACT / "corpus.jsonl").is_file():
        raise SystemExit(
            f"search-quality data not found at {SCIFACT} (expected ../shared/data/scifact-subset beside the "
            "repository, with corpus.jsonl, queries.jsonl and qrels.tsv)"
        )
    corpus: dict[str, str] = {}
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            corpus[str(row["_id"])] = str(row["text"])
    queries: dict[str, str] = {}
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            queries[str(row["_id"])] = str(row["text"])
    qrels: dict[str, dict[str, int]] = {}
    with (SCIFACT / "qrels.tsv").open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    return SciFact(corpus, {q: t for q, t in queries.items() if q in qrels}, qrels)


def doc_url(doc_id: str) -> str:
    return f"https://scifact.local/doc/{doc_id}"


# ---- databases ----


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DATABASE)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (async URL), dropped afterwards."""
    name = f"crawldex_bench_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    base = ADMIN_DATABASE.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def worker_runtime(
    data_dir: Path, embedder: Embedder, **overrides: object
) -> Iterator[tuple[WorkerRuntime, Settings]]:
    """An index-worker's runtime in this thread (services built once on a job loop, as `run_worker`
    builds them), on a fresh PostgreSQL database; closed and dropped afterwards."""
    loop = JobLoop()
    database = postgres_database()
    database_url = loop.run(database.__aenter__())
    try:
        settings = bench_settings(data_dir, database_url, **overrides)
        runtime = WorkerRuntime(loop, index=loop.run(Services.start(settings, embedder=embedder)))
        install_runtime(runtime)
        freeze_startup_objects()  # as `run_worker` does before its first job
        try:
            yield runtime, settings
        finally:
            install_runtime(None)
            loop.run(runtime.index.aclose())
    finally:
        loop.run(database.__aexit__(None, None, None))
        loop.close()


class DrainTimedWorker(CrawldexWorker):
    """crawldex's index-worker, noting when a burst has drained its queues, before the worker's exit.

    At its exit RQ's worker joins its pub/sub thread with a 1 s timeout (`BaseWorker.unsubscribe`), and in some
    exits waits it out: 1.001 s in 3 of 48 rounds of the throughput benchmark one morning, each such round
    reading 47-48 % of the embedder alone. A long-running worker pays that once, when it stops; a burst
    worker would pay it in every round it is timed over."""

    drained_at: float | None = None

    def teardown(self) -> None:
        self.drained_at = time.perf_counter()
        super().teardown()


def work_index_queue(settings: Settings) -> float:
    """Run crawldex's index-worker (CrawldexWorker) in this thread until the indexing queue is empty;
    the seconds it took, its start included and its exit not (`DrainTimedWorker`). Every job must finish."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    connection = redis.Redis.from_url(settings.redis_url)
    try:
        queue = Queue(QUEUE_INDEXING, connection=connection, serializer=JSONSerializer)
        queued = queue.count
        finished_before = queue.finished_job_registry.count
        worker = DrainTimedWorker(
            [queue],
            connection=connection,
            name=worker_name("bench"),
            index_batch_pages=settings.index_batch_pages,
        )
        started = time.perf_counter()
        worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
        seconds = (worker.drained_at or time.perf_counter()) - started
        finished = queue.finished_job_registry.count - finished_before
        if finished != queued:
            failed = queue.failed_job_registry.count
            raise RuntimeError(f"index jobs: {finished} finished, {failed} failed of {queued}")
        return seconds
    finally:
        connection.close()


def flush_redis() -> None:
    import redis

    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()  # only the benchmark's own database (13 by default)
    connection.close()


def bench_settings(data_dir: Path, database_url: str | None, **overrides: object) -> Settings:
    return Settings(
        api_token="bench-token",  # noqa: S106
        firecrawl_webhook_secret="bench-secret",  # noqa: S106
        redis_url=REDIS_URL,
        database_url=database_url,
        data_dir=data_dir,
        qdrant_collection=f"bench_{uuid.uuid4().hex[:8]}",
        log_level="WARNING",
        **overrides,  # type: ignore[arg-type]
    )


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"crawldex-bench-{prefix}-")


# ---- the null embedder (benchmarks only) ----


class NullEmbedder:
    """An Embedder that returns one constant unit vector at once: it isolates everything but the model."""

    def __init__(self, dimension: int = 384) -> None:
        self._info = EmbedderInfo(
            model_id=BUNDLED_MODEL_ID, dimension=dimension, max_input_tokens=256, max_batch_size=32
        )
        self._vector = [1.0 / math.sqrt(dimension)] * dimension

    @property
    def info(self) -> EmbedderInfo:
        return self._info

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        return [list(self._vector) for _ in texts]

    async def embed_query(self, text: str) -> Vector:
        return list(self._vector)

    async def health(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


# ---- the machine ----


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # This page is written by every full run: its own earlier version is not a change to the code.
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/benchmarks.md"],  # noqa: S607
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if dirty:
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": commit,
    }


def proc_status_mb(pid: int) -> dict[str, float]:
    """The sizes in /proc/<pid>/status (the fields given in kB: VmHWM, VmRSS, RssAnon, ...), in MB."""
    sizes = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.endswith(" kB"):
            sizes[name] = int(value.split()[0]) / 1024
    return sizes


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, in MB."""
    return proc_status_mb(pid).get("VmHWM", math.nan)


@dataclass(frozen=True)
class Resident:
    """A process's resident memory at one moment, in MB: anonymous (heap, stacks, Python's and torch's own
    allocations) and file-backed (mapped libraries and the model's weights, which the page cache can share
    between processes and give back under pressure)."""

    anonymous: float
    files: float
    # The mapped file with the most resident pages, and those pages in MB: libtorch_cpu.so in a process
    # that loads the model, whose resident part depends on how the file came into the page cache.
    largest_file: str = ""
    largest_file_mb: float = 0.0

    @property
    def total(self) -> float:
        return self.anonymous + self.files

    def __str__(self) -> str:
        parts = f"anonymous {self.anonymous:.0f} + files {self.files:.0f}"
        if self.largest_file:
            parts += f" (of them {self.largest_file} {self.largest_file_mb:.0f})"
        return parts


def resident_mb(pid: int) -> Resident:
    """`Resident` of a process now (RssAnon; RssFile and RssShmem from /proc/<pid>/status), with the
    mapped file that has the most resident pages (/proc/<pid>/smaps, read first: reading it takes memory of
    its own, which the status then counts)."""
    files = mapped_files_mb(pid)
    path, largest = max(files.items(), key=lambda item: item[1], default=("", 0.0))
    sizes = proc_status_mb(pid)
    return Resident(
        sizes.get("RssAnon", math.nan),
        sizes.get("RssFile", 0.0) + sizes.get("RssShmem", 0.0),
        Path(path).name,
        largest,
    )


def mapped_files_mb(pid: int) -> dict[str, float]:
    """The resident pages of each file mapped in the process (by path: its mappings together), in MB. A file
    deleted since it was mapped keeps its path with " (deleted)" after it."""
    per_file: dict[str, float] = defaultdict(float)
    current: str | None = None
    try:
        with Path(f"/proc/{pid}/smaps").open() as smaps:
            for line in smaps:
                head = line.split(maxsplit=5)
                # A mapping's first line starts with its address range; its fields' lines with "Name:".
                if head and "-" in head[0] and ":" not in head[0]:
                    path = head[5].strip() if len(head) == 6 else ""
                    current = path if path.startswith("/") else None
                elif current is not None and line.startswith("Rss:"):
                    per_file[current] += int(line.split()[1]) / 1024
    except OSError:
        return {}
    return dict(per_file)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far: what a request costs, whatever else the machine
    runs (another process's load or a hypervisor's steal lengthen the wall clock, not this)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_MODEL: LocalModelEmbedder | None = None


def load_model() -> LocalModelEmbedder:
    """The real in-process model, loaded once per benchmark run."""
    global _MODEL
    if _MODEL is None:
        progress("loading all-MiniLM-L6-v2 (CPU)")
        _MODEL = LocalModelEmbedder.load()
    return _MODEL


# ---- real processes ----

BIN = REPO_ROOT / ".venv" / "bin"


def ensure_commands(package: str, commands: list[str]) -> None:
    """Install the Debian ``package`` with apt-get unless all of ``commands`` are on the PATH already."""
    if all(shutil.which(command) for command in commands):
        return
    progress(f"installing {package} with apt-get")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    install = [*apt, "install", "-y", "--no-install-recommends", package]
    if subprocess.run(install, check=False, capture_output=True).returncode != 0:  # noqa: S603
        # A fresh machine may have no package lists yet.
        subprocess.run([*apt, "update"], check=True, capture_output=True)  # noqa: S603
        subprocess.run(install, check=True, capture_output=True)  # noqa: S603
    missing = [command for command in commands if not shutil.which(command)]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed (apt-get install -y {package})")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A service started as its own OS process, its output in a log file."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(  # noqa: S603
                command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait_ready(process: Process, base_url: str, timeout: float = 180, path: str = "/readyz") -> None:
    """Wait until ``base_url + path`` answers 200 (a process that exits first fails at once)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"process exited with {process.popen.returncode}:\n{process.output()}")
        try:
            if httpx.get(f"{base_url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not ready after {timeout} s:\n{process.output()}")


def api_env(data_dir: Path, port: int, database_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        "CRAWLDEX_API_TOKEN": "bench-token",
        "CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET": "bench-secret",
        "CRAWLDEX_REDIS_URL": REDIS_URL,
        "CRAWLDEX_DATA_DIR": str(data_dir),
        "CRAWLDEX_PORT": str(port),
        "CRAWLDEX_LOG_LEVEL": "WARNING",
        **extra,
    }
    if database_url:
        env["CRAWLDEX_DATABASE_URL"] = database_url
    return env


def start_tei_contract_server(log: Path) -> tuple[Process, str]:
    """A server speaking TEI's API (tests/e2e/tei_contract_server.py), backed by the in-process model in its
    own process, and its URL, not yet waited for: TEI cannot run here, and production's services embed with it.
    """
    port = free_port()
    command = [sys.executable, "-m", "tests.e2e.tei_contract_server", "--port", str(port)]
    return Process(command, {}, log), f"http://127.0.0.1:{port}"
