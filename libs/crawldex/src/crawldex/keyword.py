"""BM25 keyword vectors for Qdrant's sparse index.

Qdrant's ``Modifier.IDF`` multiplies each query term by its inverse document frequency over the
whole collection, so the scores stay correct across any number of writers. What Qdrant cannot know
is BM25's per-document part, term-frequency saturation (k1) and length normalisation (b): that is
what the document vectors carry. Queries carry only term counts.

Terms are mapped to sparse indices with a stable 32-bit hash (Python's own ``hash`` differs between
processes). Collisions merge two terms; at 2^32 slots they are rare enough not to matter to ranking.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

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


def tokenize(text: str) -> list[str]:
    """Lower-cased, accent-folded word tokens without stopwords; the analyser of keyword search."""
    folded = unicodedata.normalize("NFKD", text.lower())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return [tok for tok in _TOKEN.findall(folded) if tok not in STOPWORDS]


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

    def encode_document(self, text: str) -> SparseVector:
        tokens = tokenize(text)
        counts = _hashed_counts(tokens)
        norm = self.k1 * (1.0 - self.b + self.b * len(tokens) / self.avg_doc_tokens)
        weights = {idx: tf * (self.k1 + 1.0) / (tf + norm) for idx, tf in counts.items()}
        return _sparse(weights)

    def encode_query(self, text: str) -> SparseVector:
        return _sparse({idx: float(n) for idx, n in _hashed_counts(tokenize(text)).items()})


def _hashed_counts(tokens: list[str]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for token in tokens:
        counts[term_index(token)] += 1
    return counts


def _sparse(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[weights[i] for i in indices])
