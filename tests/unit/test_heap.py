"""HeapTrimmer gives the heap's free pages back to the system once they pile up (real glibc, this process);
an operator's mapping threshold is left as set. That large blocks are mapped apart from the heap is checked
in a fresh interpreter (tests/integration/test_heap_mapping.py)."""

from __future__ import annotations

import pytest

from crawldex.heap import HeapTrimmer, map_large_blocks_apart, resident_mb

BLOCK = 1000  # bytes: above pymalloc's 512, so each block comes from glibc's malloc
BLOCKS = 150_000  # ~150 MB


def test_a_fragmented_heap_is_trimmed_once_it_grows_past_the_slack() -> None:
    trimmer = HeapTrimmer(slack_mb=32)
    if trimmer._trim is None or resident_mb() is None:
        pytest.skip("needs glibc's malloc_trim and /proc")
    trimmer.after_burst()  # the level to compare with
    trimmer.after_burst()
    assert trimmer.trims == 0  # no growth, no trim

    blocks = [bytes(BLOCK) for _ in range(BLOCKS)]
    kept = blocks[::50]  # one block in fifty stays: the freed space between is fragmented, not at the top
    del blocks
    grown = resident_mb()
    assert grown is not None
    trimmer.after_burst()

    assert trimmer.trims == 1
    trimmed = resident_mb()
    assert trimmed is not None
    assert trimmed < grown - 64, (grown, trimmed)
    assert len(kept) == BLOCKS // 50


def test_an_operators_malloc_threshold_is_left_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not map_large_blocks_apart()
