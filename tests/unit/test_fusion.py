from __future__ import annotations

import pytest
from pydantic import ValidationError

from crawldex.adapters.qdrant import ScoredPoint
from crawldex.config import Settings
from crawldex.search import (
    Fusion,
    GroupBy,
    SearchDefaults,
    SearchMode,
    SearchRequest,
    best_per_page,
    rank_candidates,
    rrf_fuse,
    weighted_fuse,
)
from crawldex.services import search_defaults


def _points(*ids_scores: tuple[str, float]) -> list[ScoredPoint]:
    return [ScoredPoint(id=i, score=s, payload={}) for i, s in ids_scores]


def _chunks(*ids_pages_scores: tuple[str, str, float]) -> list[ScoredPoint]:
    return [ScoredPoint(id=i, score=s, payload={"doc_id": page}) for i, page, s in ids_pages_scores]


def test_rrf_sums_reciprocal_ranks() -> None:
    dense = _points(("a", 0.9), ("b", 0.8), ("c", 0.1))
    keyword = _points(("c", 12.0), ("a", 3.0))
    fused = rrf_fuse([dense, keyword], k=60)
    scores = {p.id: s for p, s in fused}
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62)
    assert [p.id for p, _ in fused] == ["a", "c", "b"]
    assert [s for _, s in fused] == sorted((s for _, s in fused), reverse=True)


def test_weighted_fusion_sums_standardised_scores() -> None:
    dense = _points(("a", 0.9), ("b", 0.7), ("c", 0.5))
    keyword = _points(("b", 30.0), ("d", 10.0))
    fused = {p.id: s for p, s in weighted_fuse(dense, keyword, 0.6, 0.4)}
    # Dense: mean 0.7, population deviation 0.1633 -> a +1.2247, b 0, c -1.2247.
    # Keyword: mean 20, deviation 10 -> b +1, d -1. A point missing from a list takes its lowest.
    z = 1.224744871391589
    assert fused == pytest.approx(
        {"a": 0.6 * z + 0.4 * -1, "b": 0.4, "c": 0.6 * -z + 0.4 * -1, "d": 0.6 * -z + 0.4 * -1}
    )
    assert [p.id for p, _ in weighted_fuse(dense, keyword, 0.6, 0.4)] == ["b", "a", "c", "d"]


def test_weighted_fusion_of_equal_scores_and_of_one_empty_list() -> None:
    assert {p.id: s for p, s in weighted_fuse(_points(("a", 1.0), ("b", 1.0)), [], 0.6, 0.4)} == {
        "a": 0.0,
        "b": 0.0,
    }
    only_keyword = weighted_fuse([], _points(("x", 3.0), ("y", 1.0)), 0.6, 0.4)
    assert [p.id for p, _ in only_keyword] == ["x", "y"]


def test_best_per_page_keeps_each_pages_first_chunk_in_order() -> None:
    ranking = _chunks(("p1#2", "p1", 0.9), ("p2#0", "p2", 0.8), ("p1#0", "p1", 0.7), ("p3#1", "p3", 0.6))
    assert [p.id for p in best_per_page(ranking)] == ["p1#2", "p2#0", "p3#1"]


def test_grouped_by_page_hybrid_fuses_evidence_from_different_chunks_of_a_page() -> None:
    """Page p1 is the best dense match through one chunk and the best keyword match through another:
    by chunk, neither of its chunks is in both lists; by page it wins, shown through its dense chunk."""
    dense = _chunks(("p1#0", "p1", 0.90), ("p3#0", "p3", 0.85), ("p2#0", "p2", 0.50), ("p4#0", "p4", 0.45))
    keyword = _chunks(("p1#1", "p1", 9.0), ("p3#0", "p3", 8.5), ("p2#1", "p2", 1.0), ("p4#1", "p4", 0.5))

    def ranked(mode: SearchMode, group_by: GroupBy, fusion: Fusion = Fusion.WEIGHTED) -> list[str]:
        return [
            p.id
            for p, _ in rank_candidates(
                dense,
                keyword,
                mode=mode,
                group_by=group_by,
                fusion=fusion,
                vector_weight=0.5,
                keyword_weight=0.5,
                rrf_k=60,
            )
        ]

    assert ranked(SearchMode.HYBRID, GroupBy.PAGE) == ["p1#0", "p3#0", "p2#0", "p4#0"]
    by_chunk = ranked(SearchMode.HYBRID, GroupBy.CHUNK)
    assert len(by_chunk) == 7
    assert by_chunk[0] == "p3#0"  # high in both lists, where each of p1's chunks is in one only
    assert ranked(SearchMode.HYBRID, GroupBy.PAGE, Fusion.RRF) == ["p1#0", "p3#0", "p2#0", "p4#0"]
    assert ranked(SearchMode.SEMANTIC, GroupBy.PAGE) == [p.id for p in dense]
    assert ranked(SearchMode.KEYWORD, GroupBy.PAGE) == ["p1#1", "p3#0", "p2#1", "p4#1"]


def test_request_validation() -> None:
    assert SearchRequest(query="x", mode="bm25").mode is SearchMode.KEYWORD
    for bad in (
        {"query": ""},
        {"query": "   "},
        {"query": "x", "limit": 0},
        {"query": "x", "limit": 101},
        {"query": "x", "offset": -1},
        {"query": "x", "mode": "fuzzy"},
        {"query": "x", "filters": {"site": "a"}},
        {"query": "x", "filters": {"url_prefix": "ftp://a/"}},
        {"query": "x", "group_by": "site"},
    ):
        with pytest.raises(ValidationError):
            SearchRequest.model_validate(bad)


def test_search_defaults_are_the_configured_defaults() -> None:
    """SearchDefaults() (what the benchmarks use) must be what a service built from Settings() gets."""
    configured = search_defaults(Settings())
    assert configured == SearchDefaults()
    assert configured.fusion is Fusion.WEIGHTED
