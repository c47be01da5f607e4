"""The heap of a long-running service: what it builds at start-up is left out of the garbage collector's
full passes (`freeze_startup_objects`), and the memory the in-process model frees is given back to the
system before it piles up (`HeapTrimmer`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
STATM = Path("/proc/self/statm")


def freeze_startup_objects() -> None:
    """Call once, when a service has built what it keeps for its whole life (imports, services, the model).

    CPython's full (generation 2) collection walks every object the collector tracks, and in a service
    those are mostly modules, classes, settings and clients built at start-up that never become garbage.
    Under webhook load ingest-api ran one full pass every few seconds that took ~200 ms (measured with
    `gc.callbacks`), stalling every request in flight: the p99 latency. Frozen objects are skipped by
    every later collection; the garbage made while serving is collected as before.
    """
    gc.collect()
    gc.freeze()
    log.debug("froze %d start-up objects out of garbage collection", gc.get_freeze_count())


def resident_mb() -> float | None:
    """This process's resident memory in MiB (Linux's /proc/self/statm); None where there is none."""
    try:
        pages = int(STATM.read_text(encoding="ascii").split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _glibc(name: str) -> Callable[..., int] | None:
    """The glibc function ``name``; None on another C library (musl, macOS), which has no such call."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function: Callable[..., int] = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    return function


M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MODEL_MMAP_THRESHOLD_BYTES = 4 * 2**20


def map_large_blocks_apart(threshold_bytes: int = MODEL_MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc serve every allocation of ``threshold_bytes`` or more with a mapping of its own, returned to
    the system when freed; True if set. Call once a process runs the in-process model.

    glibc does so from 128 KiB by default, but raises that threshold to the size of each such block freed,
    up to 32 MiB: after the model's first pass its activations (3-13 MB each at a batch of 8) were carved
    from the heap, each pass's sizes different from the last, and the heap kept the holes. A worker's peak
    over 300 pages: 700-716 MB, 626-636 with this threshold, at no speed cost measured (docs/benchmarks.md).
    An operator's ``MALLOC_MMAP_THRESHOLD_`` wins: it is left as set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _glibc("mallopt")
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1


class HeapTrimmer:
    """Gives the heap's free pages back to the system once resident memory has grown ``slack_mb`` past
    where it settled after the last trim.

    A forward pass of the model allocates and frees tens of MB of activations, their sizes changing with
    every batch's length, from whichever thread runs it. glibc keeps what is freed in each thread's arena,
    fragmented, and a worker's resident memory crept up batch after batch: 650 MB after 50 pages, 850
    after 400, 915 after 1,500 (docs/benchmarks.md). ``malloc_trim(0)`` releases the free pages of every
    arena (a few ms). Trimming after every call would also make each next pass fault its working set back
    in, so the level to compare with is taken one call after a trim, working set included, and only the
    growth past it (fragmentation) calls for the next trim.
    """

    def __init__(self, slack_mb: float = 32.0) -> None:
        self._slack = slack_mb
        self._trim: Callable[[int], int] | None = _glibc("malloc_trim")
        self._settled: float | None = None
        self._lock = threading.Lock()
        self.trims = 0

    def after_burst(self) -> None:
        """Call after a burst of allocations (a model call): trims when the heap has grown past its slack."""
        if self._trim is None:
            return
        resident = resident_mb()
        if resident is None:
            return
        with self._lock:
            if self._settled is None:
                self._settled = resident
            elif resident > self._settled + self._slack:
                self._trim(0)
                self._settled = None  # measured again after the next call, its working set back in
                self.trims += 1
