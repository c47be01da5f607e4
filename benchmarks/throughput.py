"""Benchmark 1: index throughput of one worker process (crawldex's index-worker in this process: RQ, the
pipeline, the real model, PostgreSQL, embedded Qdrant, Redis document lock) against the embedder alone on
the same chunks, in the same embedder calls as the worker makes."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from rq.job import Job
from rq.serializers import JSONSerializer

from benchmarks.common import (
    Report,
    Row,
    SciFact,
    doc_url,
    flush_redis,
    load_model,
    load_scifact,
    progress,
    temp_dir,
    work_index_queue,
    worker_runtime,
)
from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.cleaning import clean_markdown
from crawldex.config import Settings
from crawldex.jobs import WorkerRuntime, install_runtime
from crawldex.models import PageDocument

ROUNDS = 8
PAGES_A_ROUND = 15  # per batch size
CRAWL_ID = "crawl-throughput-bench"


class _Tally:
    """Chunks and seconds of the embedder alone and of the worker over the rounds of one batch size."""

    def __init__(self) -> None:
        self.chunks = self.indexed = self.pages = 0
        self.embed_seconds = self.worker_seconds = 0.0
        self.stages: dict[str, float] = defaultdict(float)
        # Each round's ratio, its two sides measured back to back on its own pages: their spread is the
        # noise the total's ratio carries.
        self.round_ratios: list[float] = []

    @property
    def embed_rate(self) -> float:
        return self.chunks / self.embed_seconds

    @property
    def worker_rate(self) -> float:
        return self.indexed / self.worker_seconds

    @property
    def ratio(self) -> float:
        return self.worker_rate / self.embed_rate


def _round(
    runtime: WorkerRuntime,
    settings: Settings,
    model: LocalModelEmbedder,
    data: SciFact,
    docs: Sequence[str],
    tally: _Tally,
    *,
    worker_first: bool,
) -> None:
    """The embedder alone on the pages' chunks, one call per batch of pages as the worker forms them
    from a full queue, and the same pages queued and indexed by the worker; ``worker_first`` runs the
    worker before the embedder alone instead of after it."""
    texts = [data.corpus[did] for did in docs]
    chunker = runtime.index.chunker
    pages = [[c.text for c in chunker.chunk(clean_markdown(text))] for text in texts]
    chunks = sum(len(page) for page in pages)
    size = settings.index_batch_pages

    def embed_alone() -> float:
        started = time.perf_counter()
        for first in range(0, len(pages), size):
            batch = [chunk for page in pages[first : first + size] for chunk in page]
            runtime.run(model.embed_documents(batch))
        return time.perf_counter() - started

    alone_seconds = 0.0 if worker_first else embed_alone()
    jobs = [
        # With a crawl id, as Firecrawl's pages come: each job also records its page's end for the crawl.
        runtime.index.queue.enqueue_index(PageDocument(url=doc_url(did), markdown=text, crawl_id=CRAWL_ID))
        for did, text in zip(docs, texts, strict=True)
    ]
    worker_seconds = work_index_queue(settings)
    if worker_first:
        alone_seconds = embed_alone()
    connection = runtime.index.queue.connection
    indexed = 0
    for enqueued in jobs:
        result = Job.fetch(enqueued.job_id, connection=connection, serializer=JSONSerializer).return_value()
        assert isinstance(result, dict)
        indexed += result["chunk_count"]
        for stage, ms in result["timings_ms"].items():
            tally.stages[stage] += ms / result["batch_pages"]  # a batch's stages, shared by its pages
    tally.chunks += chunks
    tally.pages += len(docs)
    tally.indexed += indexed
    tally.embed_seconds += alone_seconds
    tally.worker_seconds += worker_seconds
    tally.round_ratios.append((indexed / worker_seconds) / (chunks / alone_seconds))


def run(quick: bool = False) -> Report:
    report = Report("throughput")
    data = load_scifact()
    rounds, count = (4, 10) if quick else (ROUNDS, PAGES_A_ROUND)
    batch_pages = Settings().index_batch_pages
    sizes = (batch_pages, 1) if batch_pages > 1 else (1,)
    ids = sorted(data.corpus, key=int)[-(count * rounds * len(sizes) + 1) :]
    warmup, rest = ids[0], ids[1:]
    model = load_model()
    flush_redis()
    tallies = {size: _Tally() for size in sizes}
    with ExitStack() as stack:
        runtimes = {
            size: stack.enter_context(
                worker_runtime(
                    Path(stack.enter_context(temp_dir("throughput"))), model, index_batch_pages=size
                )
            )
            for size in sizes
        }
        for runtime, _ in runtimes.values():
            runtime.run(
                runtime.index.pipeline.index(PageDocument(url=doc_url(warmup), markdown=data.corpus[warmup]))
            )
        # Short rounds, each timing the embedder alone and the worker on the round's own pages (a page
        # indexed twice would be skipped as unchanged), batch sizes taking turns and every other round the
        # worker first, so that drift in the machine's speed (a shared hypervisor's), and whatever favours
        # going first or second, hits every figure alike.
        for number in range(rounds):
            progress(f"throughput: round {number + 1} of {rounds}, {count} pages a batch size")
            for size, (runtime, settings) in runtimes.items():
                docs, rest = rest[:count], rest[count:]
                install_runtime(runtime)
                _round(runtime, settings, model, data, docs, tallies[size], worker_first=number % 2 == 1)
    main = tallies[batch_pages]
    report.rows.append(
        Row(
            "1 index throughput",
            "chunks/s (docs/s) per worker",
            f"{main.worker_rate:.1f} ({main.pages / main.worker_seconds:.2f})",
            baseline=f"embedder alone {main.embed_rate:.1f} chunks/s",
            ratio=f"{main.ratio:.1%}",
            target="≥ 90 %",
            passed=main.ratio >= 0.9,
        )
    )
    total = main.stages.pop("total", main.worker_seconds * 1000)
    note = (
        f"Index throughput: {main.pages} SciFact abstracts ({main.chunks} chunks of up to 250 tokens) queued and "
        f"indexed by crawldex's index-worker in this process, taking up to {batch_pages} queued jobs at a time, "
        f"against the embedder alone on the same chunks in the same calls (one per {batch_pages} pages), in "
        f"{rounds} rounds of {count} pages (the worker first in every other round); CPU model batch {Settings().model_batch_size}, PostgreSQL, embedded Qdrant, Redis lock. "
        f"Pipeline time by stage ({total / 1000:.1f} s in the jobs' results, {main.worker_seconds:.1f} s in the "
        "worker): "
        + ", ".join(f"{s} {ms / total:.1%}" for s, ms in sorted(main.stages.items(), key=lambda kv: -kv[1]))
        + "; the rest of the worker's time is RQ, the lock, the document lookup and payload building. "
        f"Round by round (the worker's rate over the embedder alone's on the round's own pages, the two back "
        f"to back): {min(main.round_ratios):.1%} to {max(main.round_ratios):.1%}, median "
        f"{statistics.median(main.round_ratios):.1%}; the figure is the rounds' totals."
    )
    if 1 in tallies and batch_pages > 1:
        single = tallies[1]
        note += (
            f" One job at a time (CRAWLDEX_INDEX_BATCH_PAGES=1, as before batches), same run, other pages: "
            f"{single.worker_rate:.1f} chunks/s against the embedder alone page by page {single.embed_rate:.1f}: "
            f"{single.ratio:.1%}."
        )
    report.notes.append(note)
    return report
