"""The memory benchmark's split of a process's resident memory into its anonymous and file-backed parts."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from benchmarks.common import mapped_files_mb, proc_status_mb, resident_mb


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


def test_the_resident_pages_of_each_mapped_file_are_counted(tmp_path: Path) -> None:
    size = 48 * 1024 * 1024
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x01" * size)
    with path.open("rb") as file, mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) as mapped:
        before = mapped_files_mb(os.getpid()).get(str(path), 0.0)
        total = sum(mapped[offset] for offset in range(0, size, mmap.PAGESIZE))  # each page read, so resident
        during = mapped_files_mb(os.getpid())
        resident = resident_mb(os.getpid())
    assert total == size // mmap.PAGESIZE
    assert 46 < during[str(path)] - before <= 49
    assert abs(resident.largest_file_mb - max(during.values())) < 2  # the largest, named in the row
    assert f"of them {resident.largest_file} " in str(resident)


def test_files_of_the_same_name_are_counted_apart(tmp_path: Path) -> None:
    size = 8 * 1024 * 1024
    paths = [tmp_path / folder / "libsame.so" for folder in ("a", "b")]
    files, maps = [], []
    try:
        for path in paths:
            path.parent.mkdir()
            path.write_bytes(b"\x01" * size)
            files.append(path.open("rb"))
            maps.append(mmap.mmap(files[-1].fileno(), size, prot=mmap.PROT_READ))
        for mapped in maps:
            sum(mapped[offset] for offset in range(0, size, mmap.PAGESIZE))
        counted = mapped_files_mb(os.getpid())
    finally:
        for mapped in maps:
            mapped.close()
        for file in files:
            file.close()
    assert [round(counted[str(path)]) for path in paths] == [8, 8]
