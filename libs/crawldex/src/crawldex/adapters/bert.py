"""The BERT encoder of the in-process model, as a plain torch forward pass over its safetensors weights.

Why not transformers' ``BertModel``: importing it loads transformers' whole modelling stack
(torch.distributed's tensor API, torch._dynamo, SymPy, SciPy): about 150 MB of resident memory and
seconds of start-up in every process that embeds, for an inference-only encoder of a few dozen lines.
This covers exactly the configurations it checks (absolute positions, exact GELU, post-LayerNorm);
anything else is refused, to be served by TEI. tests/integration/test_local_model.py holds its vectors
to sentence-transformers' recorded ones.

Imported only where the in-process model is loaded: it needs torch (crawldex[model]).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from tokenizers import Encoding
from torch.nn import functional

from crawldex.errors import ConfigurationError


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    attention_heads: int
    layers: int
    layer_norm_eps: float

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        try:
            raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
            config = cls(
                hidden_size=int(raw["hidden_size"]),
                attention_heads=int(raw["num_attention_heads"]),
                layers=int(raw["num_hidden_layers"]),
                layer_norm_eps=float(raw["layer_norm_eps"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"{path / 'config.json'} is not a BERT configuration: {exc}") from exc
        unsupported = {
            key: raw.get(key, default)
            for key, default, wanted in (
                ("model_type", None, "bert"),
                ("hidden_act", "gelu", "gelu"),
                ("position_embedding_type", "absolute", "absolute"),
            )
            if raw.get(key, default) != wanted
        }
        if unsupported or config.hidden_size % config.attention_heads:
            raise ConfigurationError(
                f"model at {path} is not a BERT encoder the in-process runner supports ({unsupported or raw}); "
                "serve it with TEI (CRAWLDEX_TEI_URL)"
            )
        return config


@dataclass(frozen=True)
class _Layer:
    query: tuple[torch.Tensor, torch.Tensor]
    key: tuple[torch.Tensor, torch.Tensor]
    value: tuple[torch.Tensor, torch.Tensor]
    attention_out: tuple[torch.Tensor, torch.Tensor]
    attention_norm: tuple[torch.Tensor, torch.Tensor]
    intermediate: tuple[torch.Tensor, torch.Tensor]
    out: tuple[torch.Tensor, torch.Tensor]
    out_norm: tuple[torch.Tensor, torch.Tensor]


class BertEncoder:
    """``last_hidden_state`` of a BERT model in evaluation mode (no dropout, no pooler).

    The feed-forward block's activation (tokens x intermediate size: 12 MB for 8 chunks of 256 tokens of
    all-MiniLM-L6-v2, the largest tensor of a pass) is written into one buffer kept from pass to pass, and
    GELU is applied to it in place. Allocated afresh, the product and GELU's result were each a mapping of
    their own, twice a layer (`crawldex.heap.map_large_blocks_apart`), whose pages the kernel faulted in
    one by one and took back when freed: 1.5-1.7 M page faults and 3 s of system time over 350 chunks;
    without them the same chunks embed 13-17 % faster (docs/benchmarks.md). The buffer grows to the
    largest batch seen (12 MB at the default batch of 8). One pass at a time: calls are serialised.
    """

    def __init__(self, config: BertConfig, weights: dict[str, torch.Tensor]) -> None:
        self._config = config
        self._head_size = config.hidden_size // config.attention_heads

        def pair(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
            return weights[f"{prefix}.weight"], weights[f"{prefix}.bias"]

        self._words = weights["embeddings.word_embeddings.weight"]
        self._positions = weights["embeddings.position_embeddings.weight"]
        self._token_types = weights["embeddings.token_type_embeddings.weight"]
        self._embedding_norm = pair("embeddings.LayerNorm")
        self._layers = [
            _Layer(
                query=pair(f"encoder.layer.{n}.attention.self.query"),
                key=pair(f"encoder.layer.{n}.attention.self.key"),
                value=pair(f"encoder.layer.{n}.attention.self.value"),
                attention_out=pair(f"encoder.layer.{n}.attention.output.dense"),
                attention_norm=pair(f"encoder.layer.{n}.attention.output.LayerNorm"),
                intermediate=pair(f"encoder.layer.{n}.intermediate.dense"),
                out=pair(f"encoder.layer.{n}.output.dense"),
                out_norm=pair(f"encoder.layer.{n}.output.LayerNorm"),
            )
            for n in range(config.layers)
        ]
        self._inner_buffer = torch.empty(0)
        # One pass at a time: the passes share the kept buffer, and torch already spreads a pass over
        # every core, so parallel passes (the API's thread and a consumer's) would only fight over them.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> BertEncoder:
        config = BertConfig.read(path)
        weights: dict[str, torch.Tensor] = {}
        try:
            with safe_open(str(path / "model.safetensors"), framework="pt", device=device) as tensors:
                for name in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    # The pooler is not used (sentence-transformers mean-pools the last hidden state).
                    if name.startswith(("embeddings.", "encoder.")):
                        weights[name] = tensors.get_tensor(name)
            encoder = cls(config, weights)
        except (OSError, KeyError, RuntimeError) as exc:
            raise ConfigurationError(f"cannot load the BERT weights in {path}: {exc}") from exc
        width = encoder._words.shape[-1]
        layers = len({name.split(".")[2] for name in weights if name.startswith("encoder.layer.")})
        if width != config.hidden_size or layers != config.layers:
            raise ConfigurationError(
                f"the BERT weights in {path} do not match its config.json ({layers} layers of width {width}; "
                f"{config.layers} of {config.hidden_size} configured)"
            )
        return encoder

    @property
    def device(self) -> torch.device:
        return self._words.device

    def __call__(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        # Inference only; the kept buffer is an inference tensor, written in place by every pass.
        with self._lock, torch.inference_mode():
            return self._forward(input_ids, token_type_ids, attention_mask)

    def _forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        batch, width = input_ids.shape
        hidden = self._config.hidden_size
        eps = self._config.layer_norm_eps
        x = self._words[input_ids] + self._positions[:width] + self._token_types[token_type_ids]
        x = functional.layer_norm(x, (hidden,), *self._embedding_norm, eps)
        # Keys that are padding are masked out for every query: (batch, 1, 1, width), broadcast over heads.
        keep = attention_mask.bool()[:, None, None, :]
        for layer in self._layers:
            query, key, value = (
                functional.linear(x, *weights)
                .view(batch, width, self._config.attention_heads, self._head_size)
                .transpose(1, 2)
                for weights in (layer.query, layer.key, layer.value)
            )
            context = functional.scaled_dot_product_attention(query, key, value, attn_mask=keep)
            context = context.transpose(1, 2).reshape(batch, width, hidden)
            x = functional.layer_norm(
                functional.linear(context, *layer.attention_out) + x, (hidden,), *layer.attention_norm, eps
            )
            weight, bias = layer.intermediate
            inner = self._inner(batch * width, weight.shape[0])
            torch.addmm(bias, x.view(batch * width, hidden), weight.t(), out=inner)
            torch.ops.aten.gelu_(inner)  # exact (erf) GELU, as functional.gelu
            out = functional.linear(inner, *layer.out).view(batch, width, hidden)
            x = functional.layer_norm(out + x, (hidden,), *layer.out_norm, eps)
        return x

    def _inner(self, rows: int, width: int) -> torch.Tensor:
        """The feed-forward activation of ``rows`` tokens, in the kept buffer."""
        size = rows * width
        if self._inner_buffer.numel() < size:
            self._inner_buffer = torch.empty(size, dtype=self._words.dtype, device=self._words.device)
        return self._inner_buffer[:size].view(rows, width)


def longest_first(encodings: Sequence[Encoding], batch_size: int) -> Iterator[list[int]]:
    """The positions of ``encodings`` in batches of ``batch_size``, longest first, so that each batch pads to
    texts of similar length (as sentence-transformers does)."""
    order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def mean_pooled_unit_vectors(
    model: BertEncoder, encodings: Sequence[Encoding], pad_id: int
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """One forward pass over ``encodings`` (padded to the longest with ``pad_id``): each text's tokens
    mean-pooled over its own tokens and L2-normalised, as sentence-transformers' Pooling and Normalize modules
    do; float32 rows on the CPU, whatever the model's device and precision."""
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    type_ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        type_ids[row, : len(encoding.ids)] = encoding.type_ids
        mask[row, : len(encoding.ids)] = 1
    device = model.device
    attention = torch.from_numpy(mask).to(device)
    with torch.inference_mode():
        tokens = model(
            input_ids=torch.from_numpy(ids).to(device),
            token_type_ids=torch.from_numpy(type_ids).to(device),
            attention_mask=attention,
        )
        weights = attention.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        unit = functional.normalize(mean, p=2.0, dim=1)
        result: np.ndarray[Any, np.dtype[np.float32]] = unit.float().cpu().numpy()
    return result
