"""Instructions a webhook, counted: the deterministic companion of benchmark 3.

`python -m benchmarks.instructions` (or `make bench-instructions`; needs valgrind, installed with apt-get
when missing). On a shared machine two timed runs of the same code differ by more than a change of a few
per cent makes (benchmarks/ANALYSIS.md), so such a change is judged by what it does to the count: run this
before and after it. ingest-api's ASGI app, as `create_app` builds it, is driven in this process (no
uvicorn, no HTTP socket; Redis, PostgreSQL and the TEI contract server real) with the ingest benchmark's
signed deliveries, one at a time, under callgrind; the instrumentation is switched on for the measured
deliveries only (`callgrind_control`), not for start-up or the warm-up. benchmarks/bare_app.py's endpoint
is counted the same way, side by side. Counts are not time: a `rep stos` counts once per byte and a cache
miss counts nothing. The received pages are written every ``RECORDS_A_WRITE`` deliveries, as a loaded server
gathers them, not by the clock (`_write_received_pages_by_count`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REDIS_URL,
    ensure_commands,
    flush_redis,
    free_port,
    postgres_database,
    progress,
    start_tei_contract_server,
    temp_dir,
    wait_ready,
)
from benchmarks.ingest import signed_delivery, webhook_api_env

WARM_UP = 100
MEASURED = 200
RECORDS_A_WRITE = 100  # divides WARM_UP and MEASURED: every write in the count is a whole one
WEBHOOK_PATH = "/api/webhook/firecrawl"
BARE_PATH = "/bare"
_TOTALS = re.compile(r"^totals:\s*(\d+)", re.MULTILINE)


# ---- the driver: runs under valgrind, in its own process ----


async def _post(app: Any, path: str, body: bytes, signature: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-firecrawl-signature", signature.encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:  # the app never asks twice for a body sent whole; a disconnect would end it
            await asyncio.Event().wait()
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    if statuses != [202]:
        raise RuntimeError(f"{path} answered {statuses}, not 202")


async def _wait_for(flag: Path) -> None:
    # Polled: the flag comes from the counting process, and the guest must keep running for valgrind to take
    # callgrind_control's commands meanwhile.
    while not flag.exists():  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.05)


def _write_received_pages_by_count(app: Any) -> None:
    """Received pages written every ``RECORDS_A_WRITE`` deliveries, whatever the time.

    The API's recorder gathers for 100 ms, so under valgrind's slowdown a write took a few deliveries and how
    many varied from run to run (with 20 ms, the same code counted 1.889-1.941 M); at the rated load a loaded
    server's writes take 100-200 (its cap). A fixed count makes the figure repeatable and nearer a loaded
    server's.
    """
    from crawldex.crawls import ReceivedPagesRecorder

    services = app.state.services
    services.received_pages = ReceivedPagesRecorder(
        services.crawls, max_deliveries_per_write=RECORDS_A_WRITE, gather_seconds=3600
    )


async def _settle(app: Any) -> None:
    """The webhook's received-page write under way, if any, finished: inside the count or outside it."""
    services = getattr(app.state, "services", None)
    if services is not None:
        await services.received_pages.flush()


async def _drive(target: str, signals: Path) -> None:
    if target == "bare":
        from benchmarks.bare_app import create_app as create_bare_app

        app: Any = create_bare_app(REDIS_URL)
        path = BARE_PATH
    else:
        from crawldex.config import Settings
        from ingest_api.app import create_app

        app = create_app(Settings(), freeze_heap=True)
        path = WEBHOOK_PATH
    async with app.router.lifespan_context(app):
        if target == "webhook":
            _write_received_pages_by_count(app)
        # Made before the count: signing a delivery is the sender's work, not the server's.
        deliveries = [signed_delivery(i, str(uuid.UUID(int=i + 1))) for i in range(WARM_UP + MEASURED)]
        for i, delivery in enumerate(deliveries):
            if i == WARM_UP:
                await _settle(app)
                (signals / "ready").touch()
                await _wait_for(signals / "counting")
            await _post(app, path, *delivery)
        await _settle(app)
        (signals / "done").touch()
        await _wait_for(signals / "stopped")


# ---- the counter: starts the services and the driver under callgrind ----


def _await_flag(flag: Path, driver: subprocess.Popen[bytes], log: Path, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if driver.poll() is not None:
            raise RuntimeError(f"the driver exited with {driver.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {flag.name} from the driver in {timeout:.0f} s")
        time.sleep(0.2)


def _count(target: str, env: dict[str, str], work: Path) -> int:
    """Instructions of ``MEASURED`` requests to ``target``, counted by callgrind."""
    signals = work / target
    signals.mkdir()
    out, log = work / f"callgrind.{target}.out", work / f"{target}.log"
    flush_redis()
    with log.open("wb") as output:
        driver = subprocess.Popen(  # noqa: S603
            [
                shutil.which("valgrind") or "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--drive",
                target,
                str(signals),
            ],
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    control = shutil.which("callgrind_control") or "callgrind_control"
    try:
        _await_flag(signals / "ready", driver, log)
        subprocess.run([control, "-i", "on", str(driver.pid)], check=True, capture_output=True)  # noqa: S603
        (signals / "counting").touch()
        _await_flag(signals / "done", driver, log)
        subprocess.run([control, "-i", "off", str(driver.pid)], check=True, capture_output=True)  # noqa: S603
        (signals / "stopped").touch()
        if driver.wait(600) != 0:
            raise RuntimeError(f"the driver exited with {driver.returncode}:\n{log.read_text()[-3000:]}")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    match = _TOTALS.search(out.read_text(errors="replace"))
    if not match:
        raise RuntimeError(f"no totals in {out}")
    return int(match.group(1))


async def _measure() -> None:
    async with postgres_database() as database_url:
        await asyncio.to_thread(_measure_with, database_url)


def _measure_with(database_url: str) -> None:
    with temp_dir("instructions") as tmp_name:
        work = Path(tmp_name)
        tei, tei_url = start_tei_contract_server(work / "tei.log")
        try:
            wait_ready(tei, tei_url, path="/health")
            env = webhook_api_env(work / "data", free_port(), database_url, tei_url, PYTHONHASHSEED="1")
            counts = {}
            for target in ("webhook", "bare"):
                progress(
                    f"instructions: {WARM_UP} + {MEASURED} requests to the {target} endpoint under callgrind"
                )
                counts[target] = _count(target, env, work) / MEASURED
        finally:
            tei.stop()
    webhook, bare = counts["webhook"], counts["bare"]
    print(f"instructions a request ({MEASURED} after {WARM_UP}, in process, callgrind):")
    print(f"  signed Firecrawl webhook  {webhook / 1e6:.3f} M")
    print(f"  bare endpoint             {bare / 1e6:.3f} M")
    print(f"  webhook / bare            {webhook / bare:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drive", nargs=2, metavar=("TARGET", "SIGNALS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        target, signals = args.drive
        asyncio.run(_drive(target, Path(signals)))
        return
    ensure_commands("valgrind", ["valgrind", "callgrind_control"])
    asyncio.run(_measure())


if __name__ == "__main__":
    main()
