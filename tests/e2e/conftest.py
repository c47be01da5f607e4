"""Real processes: ingest-api and index-workers started as the deployment starts them, talking over Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_TOKEN, WEBHOOK_SECRET

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Deployment:
    """Separate OS processes with their own environments, like pods."""

    tmp: Path
    base_env: dict[str, str]
    processes: list[Process] = field(default_factory=list)

    def env(self, name: str, **overrides: str) -> dict[str, str]:
        env = {**os.environ, **self.base_env, **overrides}
        if "CRAWLDEX_QDRANT_URL" not in env and "CRAWLDEX_DATA_DIR" not in overrides:
            # Without a Qdrant server each process needs its own embedded store (one process per store).
            env["CRAWLDEX_DATA_DIR"] = str(self.tmp / name)
        return env

    def start(self, name: str, command: list[str], **env: str) -> Process:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(command, env=self.env(name, **env), stdout=out, stderr=subprocess.STDOUT)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_api(self, port: int, **env: str) -> Process:
        return self.start("ingest-api", [str(BIN / "crawldex-ingest-api")], CRAWLDEX_PORT=str(port), **env)

    def start_worker(self, name: str, **env: str) -> Process:
        # Each worker serves /metrics on a port of its own, as each pod would.
        return self.start(
            name, [str(BIN / "crawldex-index-worker")], CRAWLDEX_METRICS_PORT=str(free_port()), **env
        )

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def wait_until_healthy(process: Process, base_url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise AssertionError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.output()[-3000:]}"
            )
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{process.name} not ready within {timeout}s:\n{process.output()[-3000:]}")


@pytest.fixture
def deployment(
    tmp_path: Path, redis_url: str, fresh_database: str, clean_redis: object
) -> Iterator[Deployment]:
    base_env = {
        "CRAWLDEX_API_TOKEN": API_TOKEN,
        "CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CRAWLDEX_REDIS_URL": redis_url,
        "CRAWLDEX_DATABASE_URL": fresh_database,
        "CRAWLDEX_QDRANT_COLLECTION": f"e2e_{os.getpid()}_{int(time.time())}",
        "CRAWLDEX_LOG_LEVEL": "INFO",
        "HF_HUB_OFFLINE": "1",
    }
    qdrant = os.environ.get("CRAWLDEX_QDRANT_URL")
    if qdrant:
        base_env["CRAWLDEX_QDRANT_URL"] = qdrant
    deployment = Deployment(tmp_path, base_env)
    try:
        yield deployment
    finally:
        deployment.stop_all()
