"""Job functions that RQ runs, by import path (``crawldex.jobs.index_page``).

The worker builds its services once (`install_runtime`) and every job reuses them. A job that fails
raises, so RQ records the failure, retries it and finally keeps it in the failed registry.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from crawldex.models import PageDocument
from crawldex.services import Services

T = TypeVar("T")

_local = threading.local()


class JobLoop:
    """A persistent event loop that runs one job's coroutine at a time, and leaves nothing behind.

    If a job times out (our deadline, or RQ's death penalty raised into the loop) or fails, no task
    of it may survive: a leftover task would resume during the next job and could write an old
    version of a page over a newer one.
    """

    # Our own deadline fires this long before RQ's job timeout, so a slow job is cancelled cleanly
    # inside the loop rather than interrupted by RQ's death penalty in the middle of a write.
    TIMEOUT_MARGIN_SECONDS = 10.0

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        limit = None if timeout is None else max(1.0, timeout - self.TIMEOUT_MARGIN_SECONDS)
        try:
            return self._runner.run(asyncio.wait_for(coroutine, limit))
        except BaseException:
            self._cancel_leftovers()
            raise

    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks(self._runner.get_loop()) if not task.done()]

    def _cancel_leftovers(self) -> None:
        pending = self.pending_tasks()
        for task in pending:
            task.cancel()
        if pending:
            self._runner.get_loop().run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def close(self) -> None:
        self._runner.close()


class WorkerRuntime:
    """The services of one worker thread, bound to that thread's job loop."""

    def __init__(self, loop: JobLoop, services: Services) -> None:
        self.loop = loop
        self.services = services

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        return self.loop.run(coroutine, timeout=timeout)

    def close(self) -> None:
        self.loop.run(self.services.aclose())
        self.loop.close()


def install_runtime(runtime: WorkerRuntime | None) -> None:
    """Make ``runtime`` the one the jobs of the calling thread use."""
    _local.runtime = runtime


def current_runtime() -> WorkerRuntime:
    runtime: WorkerRuntime | None = getattr(_local, "runtime", None)
    if runtime is None:
        raise RuntimeError("no crawldex worker runtime in this thread: start jobs through a crawldex worker")
    return runtime


def index_page(page: dict[str, Any]) -> dict[str, Any]:
    runtime = current_runtime()
    document = PageDocument.model_validate(page)
    timeout = runtime.services.settings.index_job_timeout_seconds
    return runtime.run(runtime.services.pipeline.index(document), timeout=timeout).as_job_result()
