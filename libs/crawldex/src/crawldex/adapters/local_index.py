"""An in-process index over the vectors of the embedded Qdrant collection: dense and keyword (sparse).

qdrant-client's local mode answers a query by scoring every stored vector in Python: a sparse dot
product per point (hundreds of milliseconds at 10k chunks), and for a dense query it re-normalises
the whole vector matrix before one matrix-vector product (tens of milliseconds). This index answers
the same queries from structures built for them, with the same scores:

- keyword: posting lists with numpy, in time proportional to the postings of the query's terms; the
  same IDF, ``ln(1 + (N - df + 0.5) / (df + 0.5))`` over the live points that have the vector, the
  same float64 products summed in ascending term order, rounded to float32 as qdrant-client does.
- dense (cosine): a float32 matrix of the unit vectors, normalised once when written, as Qdrant
  normalises them on upsert; the score is the dot product with the normalised query. Float32
  summation order may differ from qdrant-client's in the last bit.

Only the order among equal scores may differ, as it does between Qdrant versions.

The index is a mirror: the vector store builds it from a scroll of the collection and applies every
write it makes to Qdrant to it as well. That is only sound because the embedded store has a single
writer (qdrant-client locks the directory against other processes, and the store serialises calls).

Payload filters are evaluated from columns of the payload fields the store filters on: keyword fields
match like Qdrant's ``MatchValue`` (the value, or one element of a list, equals the string), numeric
fields like a lower-bounded ``Range`` (some numeric value above the bound).

Keyword layout: a compacted term-major part (CSC: sorted terms, offsets, slots, values) plus the vectors
written since, kept per slot and turned into a second small term-major part when a query needs it.
A slot whose vector was overwritten or deleted is masked out of the compacted part; both parts are
merged once the changes since the last compaction exceed a fraction of the collection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic_core import to_jsonable_python

Slots = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

# Compact once the slots changed since the last compaction exceed max(MIN, live points / DIVISOR):
# the uncompacted part is re-sorted on the first query after each write, so it must stay small.
COMPACT_MIN_CHANGES = 512
COMPACT_DIVISOR = 16
_NONE = -1  # keyword column: the slot has no string value
_SEVERAL = -2  # keyword column: the slot has several, kept in the column's sets


@dataclass(frozen=True)
class Match:
    """The payload field equals ``value``, or is a list holding it (Qdrant's ``MatchValue``)."""

    key: str
    value: str


@dataclass(frozen=True)
class AtLeast:
    """Some numeric value of the payload field is above ``bound`` (``Range(gt=...)`` / ``Range(gte=...)``)."""

    key: str
    bound: float
    inclusive: bool


Condition = Match | AtLeast


@dataclass(frozen=True)
class LocalPoint:
    id: str
    indices: Sequence[int]
    values: Sequence[float]
    payload: Mapping[str, Any]
    has_keyword: bool = True  # False: the point has no keyword vector (not part of the IDF corpus)
    dense: Sequence[float] | None = None  # None: the point has no dense vector


@dataclass(frozen=True)
class _Postings:
    """Term-major postings: the slots and values of ``terms[i]`` are at ``starts[i]:starts[i + 1]``."""

    terms: npt.NDArray[np.uint32]
    starts: npt.NDArray[np.int64]
    slots: npt.NDArray[np.int32]
    values: npt.NDArray[np.float64]

    @classmethod
    def build(
        cls,
        terms: npt.NDArray[np.uint32],
        slots: npt.NDArray[np.int32],
        values: npt.NDArray[np.float64],
    ) -> _Postings:
        # One sort on (term, slot) packed into 64 bits: several times faster than np.lexsort.
        order = np.argsort((terms.astype(np.uint64) << np.uint64(32)) | slots.astype(np.uint64))
        sorted_terms = terms[order]
        unique, first = np.unique(sorted_terms, return_index=True)
        starts = np.append(first, len(sorted_terms)).astype(np.int64)
        return cls(unique.astype(np.uint32), starts, slots[order], values[order])

    @classmethod
    def empty(cls) -> _Postings:
        return cls(
            np.zeros(0, np.uint32), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float64)
        )

    def find(self, term: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        i = int(np.searchsorted(self.terms, term))
        if i == len(self.terms) or int(self.terms[i]) != term:
            return self.slots[:0], self.values[:0]
        start, end = int(self.starts[i]), int(self.starts[i + 1])
        return self.slots[start:end], self.values[start:end]

    def entries(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        return np.repeat(self.terms, np.diff(self.starts)), self.slots, self.values


def _field_values(payload: Mapping[str, Any], key: str) -> list[Any]:
    """The values a filter sees: a list is unwrapped one level, as Qdrant does."""
    if key not in payload:
        return []
    value = payload[key]
    if not isinstance(value, str | int | float | list | None):
        value = to_jsonable_python(value)  # what qdrant-client stores (dates become strings, ...)
    return list(value) if isinstance(value, list) else [value]


def _validate_query(indices: Sequence[int], values: Sequence[float]) -> None:
    """The checks qdrant-client makes of a sparse query, with the same outcome: a ValueError."""
    if len(indices) != len(values):
        raise ValueError("Indices and values must have the same length")
    if len(set(indices)) != len(indices):
        raise ValueError("Indices must be unique")
    if indices and (min(indices) < 0 or max(indices) > 2**32 - 1):
        raise ValueError("Indices must be between 0 and 4294967295")
    if any(math.isnan(v) for v in values):
        raise ValueError("Values must not contain NaN")


@dataclass
class _KeywordColumn:
    """String values of one payload field per slot: one code per slot, sets for slots with several."""

    codes: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # code -> value
    single: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    several: dict[int, set[int]] = field(default_factory=dict)  # code -> slots holding it among others
    several_of: dict[int, tuple[int, ...]] = field(default_factory=dict)  # slot -> its codes

    def grow(self, capacity: int) -> None:
        old = len(self.single)
        self.single = np.resize(self.single, capacity)
        self.single[old:] = _NONE

    def set(self, slot: int, values: list[Any]) -> None:
        self.clear(slot)
        codes = sorted({self._code(v) for v in values if isinstance(v, str)})
        if len(codes) == 1:
            self.single[slot] = codes[0]
        elif codes:
            self.single[slot] = _SEVERAL
            self.several_of[slot] = tuple(codes)
            for code in codes:
                self.several.setdefault(code, set()).add(slot)

    def value(self, slot: int) -> str | None:
        """The slot's value when it holds exactly one."""
        code = int(self.single[slot])
        return self.names[code] if code >= 0 else None

    def _code(self, value: str) -> int:
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.names)
            self.names.append(value)
        return code

    def clear(self, slot: int) -> None:
        if self.single[slot] == _SEVERAL:
            for code in self.several_of.pop(slot):
                holders = self.several[code]
                holders.discard(slot)
                if not holders:
                    del self.several[code]
        self.single[slot] = _NONE

    def matches(self, slots: Slots, value: str) -> Mask:
        code = self.codes.get(value)
        if code is None:
            return np.zeros(len(slots), np.bool_)
        mask: Mask = self.single[slots] == code
        holders = self.several.get(code)
        if holders:
            mask |= np.isin(slots, np.fromiter(holders, np.int64, len(holders)))
        return mask


@dataclass
class _NumericColumn:
    """The largest numeric value of one payload field per slot (NaN: none), for lower bounds."""

    top: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))

    def grow(self, capacity: int) -> None:
        old = len(self.top)
        self.top = np.resize(self.top, capacity)
        self.top[old:] = np.nan

    def set(self, slot: int, values: list[Any]) -> None:
        # bool is an int in Python but not a number to Qdrant's range conditions
        numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        self.top[slot] = max(numbers) if numbers else np.nan

    def clear(self, slot: int) -> None:
        self.top[slot] = np.nan

    def matches(self, slots: Slots, bound: float, inclusive: bool) -> Mask:
        values = self.top[slots]
        with np.errstate(invalid="ignore"):  # NaN compares False: no value, no match
            return values >= bound if inclusive else values > bound


def unit_vector(vector: Sequence[float] | npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The float32 vector scaled to length 1 (a zero vector stays zero), as Qdrant stores a cosine vector."""
    array = np.asarray(vector, dtype=np.float32)
    norm = np.linalg.norm(array)
    return array / norm if norm != 0.0 else array


class LocalIndex:
    """Dense and keyword search over a mirror of the collection's vectors (see module doc).

    ``dimension`` is the dense vector's size; ``None`` keeps no dense vectors (keyword search only).
    """

    def __init__(
        self,
        *,
        idf: bool,
        keyword_fields: Iterable[str],
        numeric_fields: Iterable[str],
        dimension: int | None = None,
    ) -> None:
        self.idf = idf
        self.dimension = dimension
        self._dense = np.zeros((0, dimension or 0), np.float32)
        self._has_dense: Mask = np.zeros(0, np.bool_)
        self._keyword = {key: _KeywordColumn() for key in keyword_fields}
        self._numeric = {key: _NumericColumn() for key in numeric_fields}
        self._slot_of: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._alive: Mask = np.zeros(0, np.bool_)
        self._in_base: Mask = np.zeros(0, np.bool_)  # the slot's current vector is in the compacted part
        self._base = _Postings.empty()
        self._recent: dict[int, tuple[npt.NDArray[np.uint32], npt.NDArray[np.float64]]] = {}
        self._recent_postings: _Postings | None = _Postings.empty()
        self._changed = 0  # slots written or deleted since the last compaction
        self._corpus = 0  # live points with a keyword vector: Qdrant's N for the IDF

    def __len__(self) -> int:
        return len(self._slot_of)

    # ---- writes, mirroring the store's writes to Qdrant ----

    def upsert(self, points: Iterable[LocalPoint], *, compact: bool = True) -> None:
        """Insert or replace points; ``compact=False`` while loading, which compacts once at the end."""
        for point in points:
            slot = self._slot_of.get(point.id)
            if slot is None:
                slot = self._allocate(point.id)
            else:
                self._drop_vector(slot)
            if point.has_keyword:
                indices = np.asarray(point.indices, dtype=np.int64)
                values = np.asarray(point.values, dtype=np.float64)
                order = np.argsort(indices, kind="stable")
                self._recent[slot] = (indices[order].astype(np.uint32), values[order])
                self._recent_postings = None
                self._corpus += 1
            self._set_dense(slot, point.dense)
            for key, keyword in self._keyword.items():
                keyword.set(slot, _field_values(point.payload, key))
            for key, numeric in self._numeric.items():
                numeric.set(slot, _field_values(point.payload, key))
            self._changed += 1
        if compact:
            self._maybe_compact()

    def delete(self, conditions: Sequence[Condition]) -> int:
        """Delete the live points matching every condition; returns how many."""
        slots = self._matching(conditions)
        for slot in slots.tolist():
            self._drop_vector(slot)
            self._set_dense(slot, None)
            for keyword in self._keyword.values():
                keyword.clear(slot)
            for numeric in self._numeric.values():
                numeric.clear(slot)
            point_id = self._ids[slot]
            assert point_id is not None
            del self._slot_of[point_id]
            self._ids[slot] = None
            self._alive[slot] = False
            self._free.append(slot)
            self._changed += 1
        self._maybe_compact()
        return len(slots)

    def set_payload(self, conditions: Sequence[Condition], payload: Mapping[str, Any]) -> None:
        """Qdrant's ``set_payload``: the given keys replace the point's own (a null value removes one)."""
        slots = self._matching(conditions).tolist()
        for key, keyword in self._keyword.items():
            if key in payload:
                values = _field_values(payload, key)
                for slot in slots:
                    keyword.set(slot, values)
        for key, numeric in self._numeric.items():
            if key in payload:
                values = _field_values(payload, key)
                for slot in slots:
                    numeric.set(slot, values)

    # ---- queries ----

    def matching_ids(self, conditions: Sequence[Condition]) -> list[str]:
        """The ids of the live points meeting every condition."""
        if not self.supports(conditions):
            raise ValueError("a condition names a payload field the index does not keep")
        ids = self._ids
        return [str(ids[slot]) for slot in self._matching(conditions).tolist()]

    def single_values(self, point_ids: Sequence[str], key: str) -> list[str | None]:
        """Each point's string value of the keyword field ``key``; None where it has none or several,
        or the point is not in the index."""
        column = self._keyword[key]
        slots = [self._slot_of.get(point_id) for point_id in point_ids]
        return [None if slot is None else column.value(slot) for slot in slots]

    def supports(self, conditions: Sequence[Condition]) -> bool:
        return all(
            (c.key in self._keyword) if isinstance(c, Match) else (c.key in self._numeric) for c in conditions
        )

    def search(
        self,
        indices: Sequence[int],
        values: Sequence[float],
        conditions: Sequence[Condition],
        limit: int,
    ) -> list[tuple[str, float]]:
        """The ``limit`` best (point id, score) pairs, best first; points sharing no term are left out."""
        if not self.supports(conditions):
            raise ValueError("a condition names a payload field the index does not keep")
        _validate_query(indices, values)
        capacity = len(self._alive)
        scores = np.zeros(capacity, np.float64)
        touched = np.zeros(capacity, np.bool_)
        recent = self._recent_part()
        # Ascending term order, as Qdrant's merge-join adds the products: the float64 sums are then
        # bit-identical before the rounding to float32.
        for term, weight in sorted(zip(indices, values, strict=True)):
            base_slots, base_values = self._base.find(term)
            live = self._in_base[base_slots]
            base_slots, base_values = base_slots[live], base_values[live]
            recent_slots, recent_values = recent.find(term)
            df = len(base_slots) + len(recent_slots)
            if df == 0:
                continue
            # Python floats and ints, exactly as qdrant-client computes the IDF of a query term.
            factor = float(weight) * (self._idf(df) if self.idf else 1.0)
            for slots, posting in ((base_slots, base_values), (recent_slots, recent_values)):
                scores[slots] += factor * posting
                touched[slots] = True
        candidates = np.flatnonzero(touched)
        if len(candidates) and conditions:
            candidates = candidates[self._mask(candidates, conditions)]
        if not len(candidates) or limit <= 0:
            return []
        return self._top(candidates, scores[candidates].astype(np.float32), limit)

    def search_dense(
        self, vector: Sequence[float], conditions: Sequence[Condition], limit: int
    ) -> list[tuple[str, float]]:
        """The ``limit`` most cosine-similar (point id, score) pairs, best first."""
        if self.dimension is None:
            raise ValueError("this index keeps no dense vectors")
        if not self.supports(conditions):
            raise ValueError("a condition names a payload field the index does not keep")
        if len(vector) != self.dimension:
            raise ValueError(f"query vector has {len(vector)} dimensions, the collection {self.dimension}")
        query = unit_vector(vector)
        if np.isnan(query).any():
            raise ValueError("Query vector must not contain NaN")
        candidates = np.flatnonzero(self._has_dense)
        if len(candidates) and conditions:
            candidates = candidates[self._mask(candidates, conditions)]
        if not len(candidates) or limit <= 0:
            return []
        # One product over every slot ever used beats gathering the candidate rows first (a copy of each);
        # the rows past them, up to half the matrix after it doubles, are never read.
        scores = (self._dense[: len(self._ids)] @ query)[candidates]
        return self._top(candidates, scores, limit)

    # ---- internals ----

    def _top(self, candidates: Slots, scores: npt.NDArray[np.float32], limit: int) -> list[tuple[str, float]]:
        """The ``limit`` best candidates by score, best first; ties go to the lowest slots."""
        if len(candidates) > limit:
            kth = np.partition(scores, len(scores) - limit)[len(scores) - limit]
            above = scores > kth
            tied = np.flatnonzero(scores == kth)[: limit - int(np.count_nonzero(above))]
            keep = np.concatenate([np.flatnonzero(above), tied])
            candidates, scores = candidates[keep], scores[keep]
        order = np.lexsort((candidates, -scores))
        ids = self._ids
        return [(str(ids[int(candidates[i])]), float(scores[i])) for i in order]

    def _set_dense(self, slot: int, vector: Sequence[float] | None) -> None:
        if self.dimension is None:
            return
        if vector is None:
            self._dense[slot] = 0.0
            self._has_dense[slot] = False
            return
        if len(vector) != self.dimension:
            raise ValueError(f"dense vector has {len(vector)} dimensions, the collection {self.dimension}")
        self._dense[slot] = unit_vector(vector)
        self._has_dense[slot] = True

    def _idf(self, df: int) -> float:
        n = self._corpus
        return math.log((n - df + 0.5) / (df + 0.5) + 1)

    def _allocate(self, point_id: str) -> int:
        if self._free:
            slot = self._free.pop()
            self._ids[slot] = point_id
        else:
            slot = len(self._ids)
            self._ids.append(point_id)
            if slot >= len(self._alive):
                self._grow(max(1024, 2 * len(self._alive)))
        self._slot_of[point_id] = slot
        self._alive[slot] = True
        return slot

    def _grow(self, capacity: int) -> None:
        old = len(self._alive)
        self._alive = np.resize(self._alive, capacity)
        self._in_base = np.resize(self._in_base, capacity)
        self._alive[old:] = False
        self._in_base[old:] = False
        if self.dimension is not None:
            dense = np.zeros((capacity, self.dimension), np.float32)
            dense[:old] = self._dense
            self._dense = dense
            self._has_dense = np.resize(self._has_dense, capacity)
            self._has_dense[old:] = False
        for keyword in self._keyword.values():
            keyword.grow(capacity)
        for numeric in self._numeric.values():
            numeric.grow(capacity)

    def _drop_vector(self, slot: int) -> None:
        """Take the slot's current keyword vector out of the postings and the IDF corpus."""
        if self._in_base[slot]:
            self._in_base[slot] = False
            self._corpus -= 1
        elif self._recent.pop(slot, None) is not None:
            self._recent_postings = None
            self._corpus -= 1

    def _recent_part(self) -> _Postings:
        if self._recent_postings is None:
            if self._recent:
                slots = list(self._recent)
                vectors = [self._recent[s] for s in slots]
                lengths = np.fromiter((len(v[0]) for v in vectors), np.int64, len(vectors))
                self._recent_postings = _Postings.build(
                    np.concatenate([v[0] for v in vectors]),
                    np.repeat(np.asarray(slots, np.int32), lengths),
                    np.concatenate([v[1] for v in vectors]),
                )
            else:
                self._recent_postings = _Postings.empty()
        return self._recent_postings

    def _maybe_compact(self) -> None:
        if self._changed > max(COMPACT_MIN_CHANGES, len(self._slot_of) // COMPACT_DIVISOR):
            self.compact()

    def compact(self) -> None:
        """Merge the recent vectors into the compacted part and drop overwritten and deleted entries."""
        base_terms, base_slots, base_values = self._base.entries()
        live = self._in_base[base_slots]
        recent = self._recent_part()
        recent_terms, recent_slots, recent_values = recent.entries()
        self._base = _Postings.build(
            np.concatenate([base_terms[live], recent_terms]),
            np.concatenate([base_slots[live], recent_slots]),
            np.concatenate([base_values[live], recent_values]),
        )
        for slot in self._recent:
            self._in_base[slot] = True
        self._recent.clear()
        self._recent_postings = _Postings.empty()
        self._changed = 0

    def _matching(self, conditions: Sequence[Condition]) -> Slots:
        slots = np.flatnonzero(self._alive)
        return slots[self._mask(slots, conditions)] if conditions else slots

    def _mask(self, slots: Slots, conditions: Sequence[Condition]) -> Mask:
        mask = np.ones(len(slots), np.bool_)
        for condition in conditions:
            if isinstance(condition, Match):
                mask &= self._keyword[condition.key].matches(slots, condition.value)
            else:
                mask &= self._numeric[condition.key].matches(slots, condition.bound, condition.inclusive)
        return mask
