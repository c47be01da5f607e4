from __future__ import annotations

import pytest
from pydantic import ValidationError

from crawldex.adapters.qdrant import ScoredPoint
from crawldex.config import Settings
from crawldex.search import Fusion, SearchDefaults, SearchMode, SearchRequest, rrf_fuse, weighted_fuse
from crawldex.services import search_defaults


def _points(*ids_scores: tuple[str, float]) -> list[ScoredPoint]:
    return [ScoredPoint(id=i, score=s, payload={}) for i, s in ids_scores]


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


def test_weighted_fusion_normalises_each_list() -> None:
    dense = _points(("a", 0.9), ("b", 0.5))
    keyword = _points(("b", 30.0), ("c", 10.0))
    fused = {p.id: s for p, s in weighted_fuse(dense, keyword, 0.6, 0.4)}
    assert fused == pytest.approx({"a": 0.6, "b": 0.4, "c": 0.0})


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
    ):
        with pytest.raises(ValidationError):
            SearchRequest.model_validate(bad)


def test_search_defaults_are_the_configured_defaults() -> None:
    """SearchDefaults() (what the benchmarks use) must be what a service built from Settings() gets."""
    configured = search_defaults(Settings())
    assert configured == SearchDefaults()
    assert configured.fusion is Fusion.WEIGHTED
