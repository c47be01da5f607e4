"""BM25 keyword vectors for Qdrant's sparse index.

Qdrant's ``Modifier.IDF`` multiplies each query term by its inverse document frequency over the
whole collection, so the scores stay correct across any number of writers. What Qdrant cannot know
is BM25's per-document part, term-frequency saturation (k1) and length normalisation (b): that is
what the document vectors carry. Queries carry only term counts.

Terms are mapped to sparse indices with a stable 32-bit hash (Python's own ``hash`` differs between
processes). Collisions merge two terms; at 2^32 slots they are rare enough not to matter to ranking.

Tokens are stemmed with a Snowball stemmer (PyStemmer, the C implementation) so that "inhibits" finds
"inhibition": on SciFact it lifts keyword nDCG@10 by 0.03 (docs/benchmarks.md). The stemmer is part of
what a stored keyword vector means, so a collection records the one it was built with and keeps it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass

import Stemmer

_TOKEN = re.compile(r"\w+", re.UNICODE)

# A short list of English function words: they carry no topic and would dominate term counts.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
    ]
)


NO_STEMMER = "none"
DEFAULT_STEMMER = "english"
_stemmers = threading.local()  # PyStemmer's stemmers are not safe to share between threads


def stemmer_names() -> list[str]:
    """The values a keyword stemmer setting accepts: a Snowball algorithm, or "none"."""
    return [NO_STEMMER, *sorted(Stemmer.algorithms())]


def _stemmer(name: str) -> Stemmer.Stemmer:
    cache: dict[str, Stemmer.Stemmer] | None = getattr(_stemmers, "by_name", None)
    if cache is None:
        cache = _stemmers.by_name = {}
    found = cache.get(name)
    if found is None:
        if name not in Stemmer.algorithms():
            raise ValueError(f"unknown stemmer {name!r}: one of {', '.join(stemmer_names())}")
        found = cache[name] = Stemmer.Stemmer(name)
    return found


def tokenize(text: str, stemmer: str = DEFAULT_STEMMER) -> list[str]:
    """Lower-cased, accent-folded, stemmed word tokens without stopwords; the analyser of keyword search."""
    folded = text.lower()
    if not folded.isascii():  # ASCII has nothing to decompose or drop
        folded = unicodedata.normalize("NFKD", folded)
        # No character below U+0300 combines: most of a page's skip the lookup.
        folded = "".join(ch for ch in folded if ch < "\u0300" or not unicodedata.combining(ch))
    tokens = [tok for tok in _TOKEN.findall(folded) if tok not in STOPWORDS]
    if stemmer == NO_STEMMER or not tokens:
        return tokens
    stemmed: list[str] = _stemmer(stemmer).stemWords(tokens)
    return stemmed


def term_index(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "big")


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]

    @property
    def is_empty(self) -> bool:
        return not self.indices


@dataclass(frozen=True)
class BM25Encoder:
    k1: float = 1.2
    b: float = 0.75
    avg_doc_tokens: float = 120.0
    stemmer: str = DEFAULT_STEMMER

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.stemmer)

    def encode_document(self, text: str) -> SparseVector:
        tokens = self.tokenize(text)
        counts = _hashed_counts(tokens)
        norm = self.k1 * (1.0 - self.b + self.b * len(tokens) / self.avg_doc_tokens)
        weights = {idx: tf * (self.k1 + 1.0) / (tf + norm) for idx, tf in counts.items()}
        return _sparse(weights)

    def encode_query(self, text: str) -> SparseVector:
        return _sparse({idx: float(n) for idx, n in _hashed_counts(self.tokenize(text)).items()})


def _hashed_counts(tokens: list[str]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for token in tokens:
        counts[term_index(token)] += 1
    return counts


def _sparse(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[weights[i] for i in indices])
