"""Once `map_large_blocks_apart` is set, blocks of 4 MiB or more are mapped apart from the heap, even after a
larger one was freed (which would raise glibc's own threshold), and go back to the system when freed.

Checked in a fresh interpreter (real glibc): in a process whose heap already has a large free region, as
this test process's has once the model was loaded in it, glibc serves such a block from that region
whatever the threshold, since it maps only what the heap cannot hold."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

NO_MALLINFO2 = 77

CHECK = f"""
import ctypes, ctypes.util, sys
from crawldex.heap import map_large_blocks_apart

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
    )]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
if not hasattr(libc, "mallinfo2"):
    sys.exit({NO_MALLINFO2})
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
assert map_large_blocks_apart(4 * 2**20)

# Freeing a mapped 24 MB block would raise glibc's own threshold to 24 MB: the 6 MB blocks after it
# would then come from the heap, and stay there when freed.
libc.free(libc.malloc(24 * 2**20))
for _ in range(3):
    mapped = libc.mallinfo2().hblkhd
    block = libc.malloc(6 * 2**20)
    assert block
    grown = libc.mallinfo2().hblkhd - mapped
    libc.free(block)
    assert grown >= 6 * 2**20, grown  # a mapping of its own
    assert libc.mallinfo2().hblkhd == mapped  # unmapped when freed: back to the system
"""


def test_large_blocks_are_mapped_apart_even_after_a_larger_one_was_freed() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode == NO_MALLINFO2:
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    assert result.returncode == 0, result.stderr
