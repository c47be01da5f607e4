"""Benchmark 8: the embedder on a GPU, in chunks a second and documents a minute per GPU.

Production embeds with TEI on GPU node pools. TEI cannot run on the machines this project is built and tested
on, and the GPU machines lent to some sessions (the device tool) reach no package registry and hold neither this
project's environment nor the bundled model. So the benchmark runs in two steps:

    python -m benchmarks.gpu pack DIR    here: the model's config, tokenizer and weights (float16, ~45 MB), and
                                         the quality corpus cut into chunks as the pipeline cuts it
    python3 -m benchmarks.gpu run DIR    there, from the repository root with PYTHONPATH=libs/crawldex/src
                                         (it needs torch, tokenizers, safetensors and numpy only)

`run` embeds every chunk with crawldex's own encoder (`crawldex.adapters.bert`, the in-process model's forward
pass), in float32 and in float16, at several batch sizes, the texts sorted by length as the in-process model
sorts them, and prints one JSON object: chunks a second, documents a minute, and how far float16's vectors are
from float32's. TEI serves the same model with its own kernels (flash attention, batches packed without
padding), so this is crawldex's encoder on that GPU, not TEI's own figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Encoding

    from benchmarks.common import Report
    from crawldex.adapters.bert import BertEncoder

CHUNKS_FILE = "chunks.json.gz"
MODEL_DIR = "model"
MODEL_FILES = ("config.json", "tokenizer.json", "sentence_bert_config.json")
BATCH_SIZES = (32, 128, 512)
DTYPES = ("float32", "float16")


@dataclass
class Rate:
    dtype: str
    batch_size: int
    seconds: float
    chunks_per_second: float
    documents_per_minute: float


@dataclass
class GpuRun:
    device: str
    torch_version: str
    documents: int
    chunks: int
    tokens: int
    rates: list[Rate]
    float16_min_cosine: float | None
    peak_memory_mb: float | None
    vectors: dict[str, np.ndarray[Any, np.dtype[np.float32]]] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """The run as JSON-ready data, without the vectors."""
        data = asdict(self)
        data.pop("vectors")
        return data


def pack(directory: Path, documents: int | None = None) -> dict[str, int]:
    """Write the benchmark's inputs into ``directory``: the bundled model (weights in float16) and the SciFact
    corpus's abstracts (the first ``documents`` of them, or all) cleaned and chunked by crawldex's own chunker
    with the default settings. Returns the number of documents and chunks."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from benchmarks.common import load_scifact
    from crawldex.adapters.local_model import ModelLayout
    from crawldex.chunking import Chunker, bundled_model_dir, load_tokenizer
    from crawldex.cleaning import clean_markdown
    from crawldex.config import Settings

    source = bundled_model_dir()
    target = directory / MODEL_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(source / name, target / name)
    with safe_open(str(source / "model.safetensors"), framework="pt") as tensors:
        weights = {
            name: tensors.get_tensor(name).half().contiguous()
            for name in tensors.keys()  # noqa: SIM118 (safe_open is not a mapping)
            if name.startswith(("embeddings.", "encoder."))
        }
    save_file(weights, str(target / "model.safetensors"))

    settings = Settings()
    chunker = Chunker(
        load_tokenizer(settings.tokenizer_path),
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
        max_input_tokens=ModelLayout.read(source).max_seq_length,
    )
    corpus = load_scifact().corpus
    ids = sorted(corpus, key=int)[:documents]
    chunks = [chunk.text for doc_id in ids for chunk in chunker.chunk(clean_markdown(corpus[doc_id]))]
    payload = {"documents": len(ids), "chunks": chunks}
    (directory / CHUNKS_FILE).write_bytes(gzip.compress(json.dumps(payload).encode("utf-8")))
    return {"documents": len(ids), "chunks": len(chunks)}


def embed_all(
    model: BertEncoder, encodings: Sequence[Encoding], batch_size: int, pad_id: int
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Every encoding's vector, in input order, from forward passes of ``batch_size`` texts, longest first, as
    the in-process model batches them."""
    from crawldex.adapters.bert import longest_first, mean_pooled_unit_vectors

    rows: list[np.ndarray[Any, np.dtype[np.float32]]] = [np.empty(0, dtype=np.float32)] * len(encodings)
    for batch in longest_first(encodings, batch_size):
        vectors = mean_pooled_unit_vectors(model, [encodings[i] for i in batch], pad_id)
        for i, row in zip(batch, vectors, strict=True):
            rows[i] = row
    return np.stack(rows)


def run(
    directory: Path,
    device: str = "cuda",
    batch_sizes: Sequence[int] = BATCH_SIZES,
    dtypes: Sequence[str] = DTYPES,
) -> GpuRun:
    """Embed the packed chunks on ``device`` in each precision at each batch size (after one untimed pass of
    the same size), timing the forward passes (tokenization, done once on the CPU, is not timed)."""
    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    from crawldex.adapters.bert import BertConfig, BertEncoder

    model_dir = directory / MODEL_DIR
    packed = json.loads(gzip.decompress((directory / CHUNKS_FILE).read_bytes()))
    chunks: list[str] = packed["chunks"]
    documents = int(packed["documents"])
    layout = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(int(layout["max_seq_length"]))
    encodings = tokenizer.encode_batch(chunks)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    config = BertConfig.read(model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    on_gpu = device.startswith("cuda")

    def synchronize() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    rates: list[Rate] = []
    vectors: dict[str, np.ndarray[Any, np.dtype[np.float32]]] = {}
    for dtype in dtypes:
        precision = getattr(torch, dtype)
        model = BertEncoder(
            config, {name: t.to(device=device, dtype=precision) for name, t in weights.items()}
        )
        for batch_size in batch_sizes:
            embed_all(model, encodings[:batch_size], batch_size, pad_id)  # kernels chosen, memory pooled
            synchronize()
            started = time.perf_counter()
            vectors[dtype] = embed_all(model, encodings, batch_size, pad_id)
            synchronize()
            seconds = time.perf_counter() - started
            rates.append(Rate(dtype, batch_size, seconds, len(chunks) / seconds, documents / seconds * 60))
        del model
    cosine = None
    if "float16" in vectors and "float32" in vectors:
        cosine = float(np.min(np.sum(vectors["float16"] * vectors["float32"], axis=1)))
    return GpuRun(
        device=torch.cuda.get_device_name(device) if on_gpu else device,
        torch_version=str(torch.__version__),
        documents=documents,
        chunks=len(chunks),
        tokens=sum(len(e.ids) for e in encodings),
        rates=rates,
        float16_min_cosine=cosine,
        peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None,
        vectors=vectors,
    )


def report(quick: bool = False) -> Report:
    """`python -m benchmarks --only gpu`: the benchmark on this machine's GPU, if it has one (``quick``: the
    first 500 abstracts)."""
    import tempfile

    from benchmarks.common import Report, Row

    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if not available:
        return Report(
            "gpu",
            rows=[
                Row("8 GPU throughput", "chunks/s on GPU (TEI)", "not measured (no GPU lent)", passed=None)
            ],
        )
    with tempfile.TemporaryDirectory(prefix="crawldex-bench-gpu-") as tmp:
        pack(Path(tmp), 500 if quick else None)
        measured = run(Path(tmp))
    report = Report("gpu")
    for dtype in DTYPES:
        best = max((r for r in measured.rates if r.dtype == dtype), key=lambda r: r.chunks_per_second)
        report.rows.append(
            Row(
                "8 GPU throughput",
                f"chunks/s (docs/min) on {measured.device}, crawldex's encoder in {dtype}",
                f"{best.chunks_per_second:.0f} ({best.documents_per_minute:.0f}) at batch {best.batch_size}",
                passed=None,
            )
        )
    report.notes.append(f"GPU benchmark: {json.dumps(measured.summary())}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="write the model and the chunks into DIR (here)")
    packing.add_argument("directory", type=Path)
    packing.add_argument("--documents", type=int, default=None, help="only the first N abstracts")
    running = commands.add_parser("run", help="embed the chunks in DIR on the GPU; print JSON")
    running.add_argument("directory", type=Path)
    running.add_argument("--device", default="cuda")
    running.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    running.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    running.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.command == "pack":
        print(json.dumps(pack(args.directory, args.documents)))
        return
    text = json.dumps(run(args.directory, args.device, args.batch_sizes, args.dtypes).summary(), indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
