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


class WorkerRuntime:
    """A persistent event loop plus the services bound to it, owned by one worker thread."""

    def __init__(self, runner: asyncio.Runner, services: Services) -> None:
        self.runner = runner
        self.services = services

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    def close(self) -> None:
        self.runner.run(self.services.aclose())
        self.runner.close()


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
    return runtime.run(runtime.services.pipeline.index(document)).as_job_result()
