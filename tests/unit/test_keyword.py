from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawldex.keyword import BM25Encoder, term_index, tokenize


def test_tokenize_folds_case_accents_and_drops_stopwords() -> None:
    assert tokenize("The Café is OPEN, and the naïve user's queue-length") == [
        "cafe",
        "open",
        "naive",
        "user",
        "s",
        "queue",
        "length",
    ]


def test_term_index_is_stable_across_processes() -> None:
    # Pinned: every writer of a collection must hash terms alike; Python's hash() differs per process.
    assert term_index("queue") == 2389529192
    assert term_index("queue") != term_index("queues")
    assert 0 <= term_index("queue") < 2**32


def test_document_weights_follow_bm25_saturation_and_length() -> None:
    encoder = BM25Encoder(k1=1.2, b=0.75, avg_doc_tokens=4)
    vector = encoder.encode_document("redis redis queue worker")
    weights = dict(zip(vector.indices, vector.values, strict=True))
    norm = 1.2 * (1 - 0.75 + 0.75 * 4 / 4)
    assert weights[term_index("redis")] == pytest.approx(2 * 2.2 / (2 + norm))
    assert weights[term_index("queue")] == pytest.approx(1 * 2.2 / (1 + norm))
    assert vector.indices == sorted(vector.indices)
    longer = dict(
        zip(*(lambda v: (v.indices, v.values))(encoder.encode_document("queue " + "x " * 20)), strict=True)
    )
    assert longer[term_index("queue")] < weights[term_index("queue")]  # longer documents weigh a term less


def test_query_vector_counts_terms() -> None:
    vector = BM25Encoder().encode_query("redis queue redis")
    assert dict(zip(vector.indices, vector.values, strict=True)) == {
        term_index("redis"): 2.0,
        term_index("queue"): 1.0,
    }
    assert BM25Encoder().encode_query("the and of").is_empty


@given(st.text(max_size=500))
def test_encoding_arbitrary_text_is_finite(text: str) -> None:
    vector = BM25Encoder().encode_document(text)
    assert len(vector.indices) == len(set(vector.indices)) == len(vector.values)
    assert all(math.isfinite(v) and v > 0 for v in vector.values)
