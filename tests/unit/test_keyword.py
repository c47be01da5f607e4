from __future__ import annotations

import math
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawldex.keyword import BM25Encoder, stemmer_names, term_index, tokenize


def test_tokenize_folds_case_accents_and_drops_stopwords() -> None:
    assert tokenize("The Café is OPEN, and the naïve user's queue-length", "none") == [
        "cafe",
        "open",
        "naive",
        "user",
        "s",
        "queue",
        "length",
    ]


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])))
def test_a_text_and_its_accents_written_apart_give_the_same_tokens(text: str) -> None:
    """Precomposed and decomposed accents fold alike, and an ASCII text folds as it would with accents."""
    decomposed = unicodedata.normalize("NFD", text)
    assert tokenize(decomposed, "none") == tokenize(text, "none")
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    if stripped.isascii():
        assert tokenize(stripped, "none") == tokenize(text, "none")


def test_tokenize_stems_with_english_snowball_by_default() -> None:
    assert tokenize("Inhibition of proteins inhibits the running queues") == [
        "inhibit",
        "protein",
        "inhibit",
        "run",
        "queue",
    ]
    assert tokenize("Les protéines inhibées", "french") == ["le", "protein", "inhibe"]


def test_unknown_stemmer_is_rejected_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="unknown stemmer 'klingon': one of none, arabic"):
        tokenize("words", "klingon")
    assert {"none", "english", "german"} <= set(stemmer_names())


def test_encoders_with_and_without_stemming_agree_on_unstemmed_words_only() -> None:
    stemmed, plain = BM25Encoder(), BM25Encoder(stemmer="none")
    assert stemmed.encode_query("queue").indices == plain.encode_query("queue").indices
    assert stemmed.encode_query("queues").indices == plain.encode_query("queue").indices
    assert plain.encode_query("queues").indices != plain.encode_query("queue").indices


def test_term_index_is_stable_across_processes() -> None:
    # Pinned: every writer of a collection must hash terms alike; Python's hash() differs per process.
    assert term_index("queue") == 2389529192
    assert term_index("queue") != term_index("queues")
    assert 0 <= term_index("queue") < 2**32


def test_document_weights_follow_bm25_saturation_and_length() -> None:
    encoder = BM25Encoder(k1=1.2, b=0.75, avg_doc_tokens=4)
    vector = encoder.encode_document("kafka kafka queue worker")
    weights = dict(zip(vector.indices, vector.values, strict=True))
    norm = 1.2 * (1 - 0.75 + 0.75 * 4 / 4)
    assert weights[term_index("kafka")] == pytest.approx(2 * 2.2 / (2 + norm))
    assert weights[term_index("queue")] == pytest.approx(1 * 2.2 / (1 + norm))
    assert vector.indices == sorted(vector.indices)
    longer = dict(
        zip(*(lambda v: (v.indices, v.values))(encoder.encode_document("queue " + "x " * 20)), strict=True)
    )
    assert longer[term_index("queue")] < weights[term_index("queue")]  # longer documents weigh a term less


def test_query_vector_counts_terms() -> None:
    vector = BM25Encoder().encode_query("kafka queue kafka")
    assert dict(zip(vector.indices, vector.values, strict=True)) == {
        term_index("kafka"): 2.0,
        term_index("queue"): 1.0,
    }
    assert BM25Encoder().encode_query("the and of").is_empty


@given(st.text(max_size=500))
def test_encoding_arbitrary_text_is_finite(text: str) -> None:
    vector = BM25Encoder().encode_document(text)
    assert len(vector.indices) == len(set(vector.indices)) == len(vector.values)
    assert all(math.isfinite(v) and v > 0 for v in vector.values)
