"""Redis and PostgreSQL servers of a test's own, which the test may crash and restart at will.

The machine's Redis and PostgreSQL are shared by every test; a test that kills a server needs one nobody
else uses. Both run from the binaries installed on the machine (redis-server; PostgreSQL's initdb/pg_ctl);
a missing binary fails the test, it does not skip it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import redis

from tests.e2e.conftest import free_port


def _wait(what: str, ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not come up within {timeout}s")


class PrivateRedis:
    """redis-server with an append-only file fsynced on every write, so a crash loses no acknowledged write."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.crashes = 0

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait("redis-server", self._answers)

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, (self.directory / "redis.log").read_text()
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def crash_and_restart(self, down_seconds: float) -> None:
        """SIGKILL (no shutdown save), stay down a while, start again from the append-only file."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.crashes += 1
        time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, run as the postgres user when the test runs as root."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert found, "PostgreSQL's server binaries are not installed (apt-get install postgresql)"
        self.bin = found[-1].parent
        self.port = free_port()
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="crawldex-pg-"))
        self.data = self.directory / "data"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/crawldex"
        self.restarts = 0
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str) -> None:
        subprocess.run([*self._as_user, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"
        )
        self._pg_ctl("start")
        self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "crawldex"
        )

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"), action, "-D", str(self.data), "-w", "-t", "60", "-o", options,
            "-l", str(self.directory / "postgres.log"), *extra,
        )  # fmt: skip

    def restart(self) -> None:
        """A fast shutdown (every session cut) and a start: what a failover or a pod restart does."""
        self._pg_ctl("restart", "-m", "fast")
        self.restarts += 1

    def stop(self) -> None:
        with suppress(subprocess.CalledProcessError):  # not running
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


def kill_group(popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and its children (started with start_new_session=True)."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    popen.wait()
