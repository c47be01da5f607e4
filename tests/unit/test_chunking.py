from __future__ import annotations

import pytest
from semantic_text_splitter import MarkdownSplitter
from tokenizers import AddedToken, Tokenizer, pre_tokenizers
from tokenizers.models import BPE

from crawldex.chunking import Chunker, load_tokenizer, slices_count_as_whole_text, special_token_count
from crawldex.errors import ConfigurationError


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer(None)


def _long_markdown(paragraphs: int) -> str:
    sections = []
    for i in range(paragraphs):
        sections.append(
            f"## Section {i}\n\n" + " ".join(f"Sentence {i}.{j} about queues and workers." for j in range(12))
        )
    return "# Guide\n\n" + "\n\n".join(sections)


def test_tokenizer_does_not_truncate(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "word " * 1000
    assert len(tokenizer.encode(text, add_special_tokens=False).ids) == 1000


def test_chunks_fit_the_configured_size(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tokenizer, chunk_tokens=64, overlap_tokens=8, max_input_tokens=256)
    chunks = chunker.chunk(_long_markdown(20))
    assert len(chunks) > 10
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(0 < chunker.count_tokens(c.text) <= 64 for c in chunks)


def test_splits_on_markdown_structure(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tokenizer, chunk_tokens=200, overlap_tokens=0, max_input_tokens=256)
    chunks = chunker.chunk(_long_markdown(6))
    # Each section (~130 tokens) fits a chunk of 200: sections are never cut mid-way.
    assert all(c.text.startswith(("# Guide", "## Section")) for c in chunks)


def test_short_text_is_one_chunk_and_empty_text_none(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tokenizer, chunk_tokens=128, overlap_tokens=16, max_input_tokens=256)
    assert [c.text for c in chunker.chunk("# Hi\n\nShort page.")] == ["# Hi\n\nShort page."]
    assert chunker.chunk("") == []
    assert chunker.chunk("   \n\n  ") == []


def test_refuses_chunk_size_over_model_input(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert special_token_count(tokenizer) == 2
    with pytest.raises(ConfigurationError) as err:
        Chunker(tokenizer, chunk_tokens=300, overlap_tokens=0, max_input_tokens=256)
    message = str(err.value)
    assert "300" in message
    assert "256" in message
    assert "254" in message
    Chunker(tokenizer, chunk_tokens=254, overlap_tokens=0, max_input_tokens=256)


def test_missing_tokenizer_file_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nope.json")


def test_only_berts_tokenizers_count_slices_from_the_whole_text(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert slices_count_as_whole_text(tokenizer)

    byte_level = Tokenizer(BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()
    assert not slices_count_as_whole_text(byte_level)

    # An added token that takes the space before it depends on text outside a slice.
    with_lstrip = Tokenizer.from_str(tokenizer.to_str())
    with_lstrip.add_special_tokens([AddedToken("<mask>", lstrip=True)])
    assert not slices_count_as_whole_text(with_lstrip)


def test_a_tokenizer_whose_slices_count_alone_chunks_as_the_splitter_does(tokenizer) -> None:  # type: ignore[no-untyped-def]
    whitespace_bert = Tokenizer.from_str(tokenizer.to_str())
    whitespace_bert.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    assert not slices_count_as_whole_text(whitespace_bert)
    chunker = Chunker(whitespace_bert, chunk_tokens=64, overlap_tokens=8, max_input_tokens=256)
    markdown = _long_markdown(8)
    library = MarkdownSplitter.from_huggingface_tokenizer(whitespace_bert, 64, overlap=8)
    assert [c.text for c in chunker.chunk(markdown)] == [piece.strip() for piece in library.chunks(markdown)]
