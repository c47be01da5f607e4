"""The bound a Qdrant write request is cut by never falls short of the request qdrant-client sends."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from qdrant_client import models
from qdrant_client.http.api.points_api import jsonable_encoder

from crawldex.adapters.qdrant import (
    IndexedPoint,
    _point_bytes_bound,
    _point_structs,
    _request_slices,
)
from crawldex.keyword import SparseVector

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text()
payloads = st.dictionaries(
    st.text(max_size=20),
    scalars | st.lists(scalars, max_size=5) | st.dictionaries(st.text(), scalars, max_size=3),
)


def sent_bytes(points: list[IndexedPoint]) -> int:
    """The body qdrant-client sends for an upsert of ``points`` (REST), in bytes."""
    operations = models.UpdateOperations(
        operations=[models.UpsertOperation(upsert=models.PointsList(points=_point_structs(points)))]
    )
    body: Any = jsonable_encoder(operations)
    return len(body.encode() if isinstance(body, str) else body)


def point(
    dense: list[float], indices: list[int], values: list[float], payload: dict[str, Any]
) -> IndexedPoint:
    count = min(len(indices), len(values))
    return IndexedPoint(uuid.uuid4(), dense, SparseVector(indices[:count], values[:count]), payload)


@given(
    dense=st.lists(finite, min_size=1, max_size=64),
    indices=st.lists(st.integers(0, 2**32 - 1), max_size=32, unique=True),
    values=st.lists(finite, max_size=32),
    payload=payloads,
)
@example(
    dense=[-1.2345678901234567e-300] * 8,
    indices=[2**32 - 1],
    values=[-2.2250738585072014e-308],
    payload={"text": '\x00\x1f"\\' * 50, "title": "日本語のページ" * 20, "url_prefixes": ["a", "b"]},
)
def test_the_bound_of_a_point_is_at_least_what_is_sent(
    dense: list[float], indices: list[int], values: list[float], payload: dict[str, Any]
) -> None:
    one = point(dense, indices, values, payload)
    assert _point_bytes_bound(one) >= sent_bytes([one]) - len('{"operations":[{"upsert":{"points":[]}}]}')


@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40), max_bytes=st.integers(1, 200_000))
def test_slices_keep_the_order_and_stay_within_the_bound_unless_one_point_alone_exceeds_it(
    sizes: list[int], max_bytes: int
) -> None:
    points = [point([0.5], [1], [1.0], {"text": "x" * size}) for size in sizes]
    slices = _request_slices(points, max_bytes)
    assert [p.id for run in slices for p in run] == [p.id for p in points]
    for run in slices:
        assert len(run) >= 1
        bounds = [_point_bytes_bound(p) for p in run]
        assert sum(bounds) <= max_bytes or len(run) == 1


def test_a_page_of_abstracts_is_one_slice_under_the_default_bound() -> None:
    points = [point([0.1] * 384, list(range(100)), [0.5] * 100, {"text": "word " * 300}) for _ in range(400)]
    assert len(_request_slices(points, 24 * 2**20)) == 1
