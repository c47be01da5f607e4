"""Search quality on a slice of scifact-subset with the real model, PostgreSQL and embedded Qdrant: hybrid
must not rank worse than keyword search alone (nDCG@10). `make bench` measures the whole set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from crawldex.models import PageDocument
from crawldex.search import SearchMode, SearchRequest
from crawldex.services import Services

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact-subset"
QUERIES = 30
OTHER_DOCUMENTS = 250

pytestmark = pytest.mark.slow


def _load() -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.fail(f"scifact-subset not found at {SCIFACT} (expected ../shared/data/scifact-subset)")
    corpus = {
        str(row["_id"]): str(row["text"])
        for row in map(json.loads, (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines())
    }
    queries = {
        str(row["_id"]): str(row["text"])
        for row in map(json.loads, (SCIFACT / "queries.jsonl").read_text(encoding="utf-8").splitlines())
    }
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return corpus, queries, qrels


def _ndcg_at_10(ranked: list[str], judged: dict[str, int]) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(judged.values(), reverse=True)[:10]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


async def _documents(services: Services, query: str, mode: SearchMode) -> list[str]:
    """Chunk hits to documents, each ranked where its best chunk first appears."""
    response = await services.search.search(SearchRequest(query=query, mode=mode, limit=50))
    return list(dict.fromkeys(r.url.rsplit("/", 1)[1] for r in response.results))


async def test_hybrid_ranks_at_least_as_well_as_keyword(services: Services) -> None:
    corpus, queries, qrels = _load()
    chosen = sorted((q for q in queries if q in qrels), key=int)[:QUERIES]
    judged = {d for q in chosen for d in qrels[q]}
    others = [d for d in sorted(corpus, key=int) if d not in judged][:OTHER_DOCUMENTS]
    for did in sorted(judged | set(others), key=int):
        await services.pipeline.index(
            PageDocument(url=f"https://scifact.local/doc/{did}", markdown=corpus[did])
        )
    ndcg: dict[SearchMode, float] = {}
    for mode in (SearchMode.HYBRID, SearchMode.KEYWORD, SearchMode.SEMANTIC):
        scores = [_ndcg_at_10(await _documents(services, queries[q], mode), qrels[q]) for q in chosen]
        ndcg[mode] = sum(scores) / len(scores)
    assert ndcg[SearchMode.KEYWORD] > 0.3, ndcg  # the index works at all
    assert ndcg[SearchMode.HYBRID] >= ndcg[SearchMode.KEYWORD], ndcg
