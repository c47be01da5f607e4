"""The interface every embedder implements (in-process model, TEI)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Vector = list[float]


@dataclass(frozen=True)
class EmbedderInfo:
    """What the pipeline must know about an embedder before it chunks anything."""

    model_id: str
    dimension: int
    max_input_tokens: int  # including the special tokens the model adds ([CLS], [SEP], ...)
    max_batch_size: int


class Embedder(Protocol):
    """Turns texts into L2-normalised dense vectors.

    Documents and queries are embedded separately because some models prefix them with different
    prompts. Implementations batch internally within their own limits and raise
    `crawldex.errors.EmbedderError` on failure; they never return partial results.
    """

    @property
    def info(self) -> EmbedderInfo: ...

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]: ...

    async def embed_query(self, text: str) -> Vector: ...

    async def health(self) -> None:
        """Raise `EmbedderError` if the embedder cannot embed right now."""
        ...

    async def aclose(self) -> None: ...
