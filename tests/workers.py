"""The project's worker inside a test process, and waiting for what it does."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings
from crawldex.jobs import JobLoop
from crawldex.services import Services
from crawldex.worker import EmbeddedConsumer


@contextmanager
def running_workers(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[None]:
    """The project's worker (the embedded consumer) on both queues, sharing the session's model."""
    loop = JobLoop()
    shared = loop.run(Services.start(settings, embedder=embedder, migrate=False))
    consumer = EmbeddedConsumer(settings, [QUEUE_INDEXING, QUEUE_RESCRAPE], shared)
    consumer.start()
    try:
        yield
    finally:
        assert consumer.stop(timeout=120)
        loop.run(shared.aclose())
        loop.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")
