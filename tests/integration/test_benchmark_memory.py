"""The memory benchmark's split of a process's resident memory into its anonymous and file-backed parts."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from benchmarks.common import proc_status_mb, resident_mb


def test_the_parts_add_up_to_the_resident_set() -> None:
    before = resident_mb(os.getpid())
    assert before.anonymous > 0
    assert before.files > 0  # the interpreter's own mapped binary and libraries
    assert abs(before.total - proc_status_mb(os.getpid())["VmRSS"]) < 2


def test_written_private_memory_is_counted_as_anonymous() -> None:
    size = 64 * 1024 * 1024
    page = mmap.PAGESIZE
    before = resident_mb(os.getpid())
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        for offset in range(0, size, page):  # resident only once written
            block[offset] = 1
        during = resident_mb(os.getpid())
    finally:
        block.close()
    assert during.anonymous - before.anonymous > 60
    assert abs(during.files - before.files) < 16


def test_the_mapped_file_with_the_most_resident_pages_is_named(tmp_path: Path) -> None:
    size = 96 * 1024 * 1024  # more than any library this test process maps
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x01" * size)
    with path.open("rb") as file, mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) as mapped:
        total = sum(mapped[offset] for offset in range(0, size, mmap.PAGESIZE))  # each page read, so resident
        during = resident_mb(os.getpid())
    assert total == size // mmap.PAGESIZE
    assert during.largest_file == "weights.bin"
    assert 90 < during.largest_file_mb <= 97
    assert "of them weights.bin" in str(during)
