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


async def run(quick: bool = False) -> Report:
    report = Report("throughput")
    data = load_scifact()
    count = 40 if quick else 60
    docs = [(did, data.corpus[did]) for did in sorted(data.corpus, key=int)[-count:]]
    model = load_model()
    flush_redis()
    with temp_dir("throughput") as tmp:
        async with postgres_database() as database_url:
            services = await Services.start(bench_settings(Path(tmp), database_url), embedder=model)
            try:
                pages = [[c.text for c in services.chunker.chunk(clean_markdown(text))] for _, text in docs]
                chunks = sum(len(p) for p in pages)
                await model.embed_documents(pages[0])  # warm-up
                progress(f"throughput: embedder alone on {chunks} chunks of {len(docs)} pages")
                started = time.perf_counter()
                for texts in pages:
                    await model.embed_documents(texts)
                embed_seconds = time.perf_counter() - started
                progress("throughput: the same pages through IndexingPipeline")
                stages: dict[str, float] = defaultdict(float)
                started = time.perf_counter()
                indexed = 0
                for did, text in docs:
                    outcome = await services.pipeline.index(PageDocument(url=doc_url(did), markdown=text))
                    indexed += outcome.chunk_count
                    for stage, ms in outcome.timings_ms.items():
                        stages[stage] += ms
                pipeline_seconds = time.perf_counter() - started
            finally:
                await services.aclose()
    embed_rate = chunks / embed_seconds
    pipe_rate = indexed / pipeline_seconds
    ratio = pipe_rate / embed_rate
    report.rows.append(
        Row(
            "1 index throughput",
            "chunks/s (docs/s) per worker",
            f"{pipe_rate:.1f} ({len(docs) / pipeline_seconds:.2f})",
            baseline=f"embedder alone {embed_rate:.1f} chunks/s",
            ratio=f"{ratio:.1%}",
            target="≥ 90 %",
            passed=ratio >= 0.9,
        )
    )
    total = stages.pop("total", pipeline_seconds * 1000)
    report.notes.append(
        f"Index throughput: {len(docs)} SciFact abstracts ({chunks} chunks, 250-token chunks), CPU model batch "
        f"32, PostgreSQL, embedded Qdrant, Redis lock. Pipeline time by stage (% of {total / 1000:.1f} s): "
        + ", ".join(f"{s} {ms / total:.1%}" for s, ms in sorted(stages.items(), key=lambda kv: -kv[1]))
        + "; the remainder is the lock, the document lookup and payload building."
    )
    return report
