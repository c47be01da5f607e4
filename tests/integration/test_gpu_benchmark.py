"""The GPU benchmark's two steps, run here on the CPU: what `pack` writes is what `run` embeds, and it embeds
as the in-process model does (the same encoder and pooling; the packed weights are rounded to float16)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmarks import gpu

from crawldex.adapters.local_model import LocalModelEmbedder


def test_the_packed_chunks_embed_as_the_in_process_model_embeds_them(
    tmp_path: Path, embedder: LocalModelEmbedder
) -> None:
    packed = gpu.pack(tmp_path, documents=4)
    chunks = json.loads(gzip.decompress((tmp_path / gpu.CHUNKS_FILE).read_bytes()))["chunks"]

    measured = gpu.run(tmp_path, device="cpu", batch_sizes=[3], dtypes=["float32", "float16"])

    assert packed == {"documents": 4, "chunks": len(chunks)}
    assert len(chunks) > 4  # abstracts longer than a chunk: the chunker cut them
    assert (measured.documents, measured.chunks) == (4, len(chunks))
    assert [(rate.dtype, rate.batch_size) for rate in measured.rates] == [("float32", 3), ("float16", 3)]
    assert all(rate.chunks_per_second > 0 for rate in measured.rates)
    expected = np.array(embedder.embed_documents_sync(chunks), dtype=np.float32)
    assert np.min(np.sum(measured.vectors["float32"] * expected, axis=1)) > 0.9999
    assert measured.float16_min_cosine is not None
    assert measured.float16_min_cosine > 0.999
    assert "vectors" not in measured.summary()
    assert json.loads(json.dumps(measured.summary()))["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the benchmark runs instead")
def test_without_a_gpu_the_row_says_so() -> None:
    report = gpu.report()
    assert [(row.benchmark, row.value, row.passed) for row in report.rows] == [
        ("8 GPU throughput", "not measured (no GPU lent)", None)
    ]
