"""`run_worker`, the index- and rescrape-workers' main, in this process: what it does before its first job."""

from __future__ import annotations

import gc

import pytest

from crawldex.config import Settings
from crawldex.worker import run_worker


@pytest.mark.parametrize("kind", ["index-worker", "rescrape-worker"])
def test_a_worker_leaves_its_start_up_out_of_garbage_collection(settings: Settings, kind: str) -> None:
    """Full collections would otherwise walk the ~300,000 objects an index-worker's start-up builds (torch,
    the model, the clients) for its whole life."""
    gc.unfreeze()
    try:
        run_worker(
            settings.model_copy(update={"metrics_port": 0}), kind, burst=True
        )  # an empty queue: returns
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the test process goes on building and dropping services
