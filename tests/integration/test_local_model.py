"""The in-process model against sentence-transformers' own vectors for the same texts, recorded in
tests/fixtures/model/ (sentence-transformers is not a dependency: importing it costs ~175 MB)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from crawldex.adapters.bert import BertConfig
from crawldex.adapters.local_model import LocalModelEmbedder, ModelLayout, _one_blas_thread
from crawldex.chunking import bundled_model_dir
from crawldex.errors import ConfigurationError

REFERENCE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "model" / "all_minilm_l6_v2_reference.json").read_text("utf-8")
)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_vectors_match_sentence_transformers(embedder: LocalModelEmbedder) -> None:
    # The reference holds a text over the 256-token limit (truncation), one of 3 tokens, and non-ASCII.
    assert max(REFERENCE["token_counts_untruncated"]) > embedder.info.max_input_tokens
    vectors = embedder.embed_documents_sync(REFERENCE["texts"])
    for text, got, expected in zip(REFERENCE["texts"], vectors, REFERENCE["vectors"], strict=True):
        assert len(got) == embedder.info.dimension == 384
        assert cosine(got, expected) > 0.99999, text[:60]
        assert max(abs(x - y) for x, y in zip(got, expected, strict=True)) < 1e-4, text[:60]


def test_a_vector_does_not_depend_on_its_batch(embedder: LocalModelEmbedder) -> None:
    """Texts are sorted by length and padded per batch; each comes back in its place, unchanged."""
    texts = REFERENCE["texts"]
    together = embedder.embed_documents_sync(texts)
    alone = [embedder.embed_documents_sync([text])[0] for text in texts]
    reversed_order = embedder.embed_documents_sync(list(reversed(texts)))[::-1]
    for one, other, third in zip(together, alone, reversed_order, strict=True):
        assert cosine(one, other) > 0.99999
        assert cosine(one, third) > 0.99999
        assert math.isclose(math.fsum(x * x for x in one), 1.0, rel_tol=1e-5)


async def test_query_and_documents_share_one_space(embedder: LocalModelEmbedder) -> None:
    query = await embedder.embed_query("how does KEDA scale index workers on queue length?")
    documents = await embedder.embed_documents(
        ["KEDA scales the index workers with the length of the RQ queue.", "A recipe for lemon cake."]
    )
    assert cosine(query, documents[0]) > cosine(query, documents[1]) + 0.3
    assert await embedder.embed_documents([]) == []


def test_loading_the_model_leaves_numpy_one_blas_thread_and_torch_its_own(
    embedder: LocalModelEmbedder,
) -> None:
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    def pools() -> dict[str, int]:
        return {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}

    assert pools().get("openblas") == 1  # numpy's BLAS, which the embedded store's vector search uses
    default = torch.get_num_threads()
    torch.set_num_threads(2)  # two, whatever this machine's count: a limit that took torch's pool shows
    try:
        _one_blas_thread()
        assert torch.get_num_threads() == 2
        assert pools().get("openmp") == 2
    finally:
        torch.set_num_threads(default)
    vectors = np.array(embedder.embed_documents_sync(["one", "two"]))  # and both still work
    assert vectors.shape == (2, embedder.info.dimension)


def test_a_directory_that_is_not_mean_pooled_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), model_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    assert ModelLayout.read(model_dir) == ModelLayout(max_seq_length=256, dimension=384)
    pooling = model_dir / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text("utf-8"))
    pooling.write_text(
        json.dumps(config | {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True})
    )
    with pytest.raises(ConfigurationError, match="mean pooling"):
        ModelLayout.read(model_dir)
    (model_dir / "modules.json").unlink()
    with pytest.raises(ConfigurationError, match="not a sentence-transformers model directory"):
        LocalModelEmbedder.load(model_dir=model_dir)


def test_only_the_bundled_model_is_served_in_process() -> None:
    with pytest.raises(ConfigurationError, match="TEI"):
        LocalModelEmbedder.load(model_name="bge-small-en-v1.5")


def test_an_encoder_the_runner_does_not_reproduce_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), model_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text("utf-8"))
    assert BertConfig.read(model_dir) == BertConfig(
        hidden_size=384, attention_heads=12, layers=6, layer_norm_eps=1e-12
    )
    for change in (
        {"hidden_act": "gelu_new"},
        {"position_embedding_type": "relative_key"},
        {"model_type": "roberta"},
        {"num_attention_heads": 7},
    ):
        config_file.write_text(json.dumps(config | change))
        with pytest.raises(ConfigurationError, match="TEI"):
            LocalModelEmbedder.load(model_dir=model_dir)
    config_file.write_text(json.dumps(config | {"hidden_size": "wide"}))
    with pytest.raises(ConfigurationError, match="not a BERT configuration"):
        LocalModelEmbedder.load(model_dir=model_dir)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ConfigurationError, match="cannot load the BERT weights"):
        LocalModelEmbedder.load(model_dir=model_dir)
    (model_dir / "model.safetensors").symlink_to(bundled_model_dir() / "model.safetensors")
    for change in ({"hidden_size": 768}, {"num_hidden_layers": 4}):
        config_file.write_text(json.dumps(config | change))
        with pytest.raises(ConfigurationError, match="do not match its config"):
            LocalModelEmbedder.load(model_dir=model_dir)
