"""HeapTrimmer gives the heap's free pages back to the system once they pile up, and large blocks are mapped
apart from the heap (real glibc, this process)."""

from __future__ import annotations

import ctypes
import ctypes.util

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def test_large_blocks_are_mapped_apart_even_after_a_larger_one_was_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert map_large_blocks_apart(4 * 2**20)

    # Freeing a mapped 24 MB block would raise glibc's own threshold to 24 MB: the 6 MB blocks after it
    # would then come from the heap, and stay there when freed.
    libc.free(libc.malloc(24 * 2**20))
    for _ in range(3):
        mapped = libc.mallinfo2().hblkhd
        block = libc.malloc(6 * 2**20)
        assert block
        try:
            assert libc.mallinfo2().hblkhd - mapped >= 6 * 2**20
        finally:
            libc.free(block)
        assert libc.mallinfo2().hblkhd == mapped  # unmapped when freed: back to the system


def test_an_operators_malloc_threshold_is_left_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not map_large_blocks_apart()
