"""Benchmark 1: index throughput of one worker process (IndexingPipeline, real model, PostgreSQL, embedded
Qdrant, Redis document lock) against the embedder alone on the same chunks, in the same per-page batches."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import (
    Report,
    Row,
    bench_settings,
    doc_url,
    flush_redis,
    load_model,
    load_scifact,
    postgres_database,
    progress,
    temp_dir,
)
from crawldex.cleaning import clean_markdown
from crawldex.models import PageDocument
from crawldex.services import Services

ROUNDS = 2


async def run(quick: bool = False) -> Report:
    report = Report("throughput")
    data = load_scifact()
    count = 40 if quick else 60
    ids = sorted(data.corpus, key=int)[-(count * ROUNDS + 1) :]
    warmup, rounds = ids[0], [ids[1 + r * count : 1 + (r + 1) * count] for r in range(ROUNDS)]
    model = load_model()
    flush_redis()
    chunks = indexed = 0
    embed_seconds = pipeline_seconds = 0.0
    stages: dict[str, float] = defaultdict(float)
    with temp_dir("throughput") as tmp:
        async with postgres_database() as database_url:
            services = await Services.start(bench_settings(Path(tmp), database_url), embedder=model)
            try:
                await services.pipeline.index(PageDocument(url=doc_url(warmup), markdown=data.corpus[warmup]))
                # Rounds alternate the embedder alone and the pipeline on the round's own pages (a page
                # indexed twice would be skipped as unchanged), so drift in the machine's speed hits both.
                for number, docs in enumerate(rounds, 1):
                    texts = [data.corpus[did] for did in docs]
                    pages = [[c.text for c in services.chunker.chunk(clean_markdown(t))] for t in texts]
                    chunks += sum(len(p) for p in pages)
                    progress(f"throughput: round {number}, the embedder alone on {len(docs)} pages")
                    started = time.perf_counter()
                    for page in pages:
                        await model.embed_documents(page)
                    embed_seconds += time.perf_counter() - started
                    progress(f"throughput: round {number}, the same pages through IndexingPipeline")
                    started = time.perf_counter()
                    for did, text in zip(docs, texts, strict=True):
                        outcome = await services.pipeline.index(PageDocument(url=doc_url(did), markdown=text))
                        indexed += outcome.chunk_count
                        for stage, ms in outcome.timings_ms.items():
                            stages[stage] += ms
                    pipeline_seconds += time.perf_counter() - started
                batch = services.settings.model_batch_size
            finally:
                await services.aclose()
    documents = count * ROUNDS
    embed_rate = chunks / embed_seconds
    pipe_rate = indexed / pipeline_seconds
    ratio = pipe_rate / embed_rate
    report.rows.append(
        Row(
            "1 index throughput",
            "chunks/s (docs/s) per worker",
            f"{pipe_rate:.1f} ({documents / pipeline_seconds:.2f})",
            baseline=f"embedder alone {embed_rate:.1f} chunks/s",
            ratio=f"{ratio:.1%}",
            target="≥ 90 %",
            passed=ratio >= 0.9,
        )
    )
    total = stages.pop("total", pipeline_seconds * 1000)
    report.notes.append(
        f"Index throughput: {documents} SciFact abstracts ({chunks} chunks, 250-token chunks) in {ROUNDS} rounds, "
        f"each the embedder alone then the pipeline on the round's pages, one page per call as a worker embeds; "
        f"CPU model batch {batch}, PostgreSQL, embedded Qdrant, Redis lock. Pipeline time by stage (% of "
        f"{total / 1000:.1f} s): "
        + ", ".join(f"{s} {ms / total:.1%}" for s, ms in sorted(stages.items(), key=lambda kv: -kv[1]))
        + "; the remainder is the lock, the document lookup and payload building."
    )
    return report
