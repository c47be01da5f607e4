"""Properties of the chunker on arbitrary markdown.

What "no text lost" means here: the chunker trims whitespace at chunk edges and may repeat text in
overlapping chunks, nothing else. So every chunk is a verbatim slice of the input starting at its
``start``, every non-whitespace character of the input lies inside some chunk's slice, and with no
overlap the slices are disjoint and in order (the chunks, joined, are the input less whitespace).
"""

from __future__ import annotations

import itertools
from functools import cache

from hypothesis import example, given
from hypothesis import strategies as st
from semantic_text_splitter import MarkdownSplitter
from tokenizers import Tokenizer

from crawldex.chunking import Chunk, Chunker, SliceTokenCounts, load_tokenizer, slices_count_as_whole_text

MAX_INPUT_TOKENS = 256


@cache
def _tokenizer() -> Tokenizer:
    return load_tokenizer(None)


@cache
def _chunker(chunk_tokens: int, overlap_tokens: int) -> Chunker:
    return Chunker(
        _tokenizer(),
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
        max_input_tokens=MAX_INPUT_TOKENS,
    )


_words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12
).filter(lambda w: not w.isspace())
_line = st.lists(_words, min_size=1, max_size=20).map(" ".join)
_block = st.one_of(
    _line,
    _line.map(lambda line: "# " + line),
    _line.map(lambda line: "### " + line),
    st.lists(_line, min_size=1, max_size=5).map(lambda items: "\n".join("- " + i for i in items)),
    _line.map(lambda line: f"```\n{line}\n```"),
    st.lists(_words, min_size=2, max_size=4).map(lambda cells: "| " + " | ".join(cells) + " |"),
    st.text(max_size=80),  # anything at all, whitespace and control characters included
)
markdown_documents = st.lists(_block, max_size=15).map("\n\n".join)
sizes = st.tuples(st.integers(min_value=8, max_value=96), st.integers(min_value=0, max_value=95)).map(
    lambda pair: (pair[0], pair[1] % (pair[0] // 2 + 1))  # overlap below half the chunk size
)


def _covered(chunks: list[Chunk], length: int) -> list[bool]:
    covered = [False] * length
    for chunk in chunks:
        for position in range(chunk.start, chunk.start + len(chunk.text)):
            covered[position] = True
    return covered


@given(markdown=markdown_documents, size=sizes)
@example(markdown="  leading blanks\n\nthen text", size=(16, 4))
@example(markdown="\x1c\x1dseparators Python strips but the splitter keeps", size=(16, 0))
@example(markdown="word " * 300, size=(8, 3))
def test_chunks_fit_and_keep_every_character(markdown: str, size: tuple[int, int]) -> None:
    chunk_tokens, overlap_tokens = size
    chunker = _chunker(chunk_tokens, overlap_tokens)
    chunks = chunker.chunk(markdown)

    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text, "no empty chunks"
        assert chunk.text == chunk.text.strip(), "chunks are trimmed"
        assert 0 < chunker.count_tokens(chunk.text) <= chunk_tokens
        assert markdown[chunk.start : chunk.start + len(chunk.text)] == chunk.text

    covered = _covered(chunks, len(markdown))
    lost = [(i, ch) for i, ch in enumerate(markdown) if not ch.isspace() and not covered[i]]
    assert lost == []

    starts = [c.start for c in chunks]
    assert starts == sorted(set(starts)), "chunks advance through the text"
    if overlap_tokens == 0:
        for before, after in itertools.pairwise(chunks):
            assert before.start + len(before.text) <= after.start, "no overlap was asked for"
        assert "".join("".join(c.text.split()) for c in chunks) == "".join(markdown.split())


@given(markdown=markdown_documents, size=sizes)
def test_chunking_is_deterministic(markdown: str, size: tuple[int, int]) -> None:
    chunk_tokens, overlap_tokens = size
    first = _chunker(chunk_tokens, overlap_tokens).chunk(markdown)
    assert _chunker(chunk_tokens, overlap_tokens).chunk(markdown) == first
    fresh = Chunker(
        _tokenizer(),
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
        max_input_tokens=MAX_INPUT_TOKENS,
    )
    assert fresh.chunk(markdown) == first


# Text built to cut where the shortcut must not count from the whole text: words joined by characters
# BERT's normaliser deletes or splits apart (control characters, CJK, combining accents), punctuation,
# an added token cut in the middle, and words over WordPiece's 100 characters.
_tricky_words = st.one_of(
    _words,
    st.sampled_from(
        ["[MASK]", "[SEP]", "[MA", "SK]", "\x0b", "\x0c", "\x00", "\u0301", "日本語", "naïve", "a" * 120]
    ),
)
_tricky_text = st.lists(
    st.tuples(_tricky_words, st.sampled_from(["", " ", "\n", "\n\n", ".", "\x0b", "-", "\t"])), max_size=60
).map(lambda parts: "".join(word + gap for word, gap in parts))


@given(text=_tricky_text, cuts=st.lists(st.integers(min_value=0), min_size=2, max_size=2))
@example(text="ab[MASK]cd", cuts=[3, 10])
@example(text="one\x0btwo three", cuts=[4, 13])
@example(text="e\u0301t\u00e9 done", cuts=[1, 9])
def test_a_slice_counts_as_many_tokens_as_it_has_alone(text: str, cuts: list[int]) -> None:
    start, end = sorted(cut % (len(text) + 1) for cut in cuts)
    counts = SliceTokenCounts(_tokenizer(), text)
    piece = text[start:end]
    assert counts.count(piece) == len(_tokenizer().encode(piece, add_special_tokens=False).ids)


@given(markdown=st.one_of(markdown_documents, _tricky_text), size=sizes)
@example(markdown="word " * 300, size=(8, 3))
def test_chunks_are_those_of_the_tokenizer_as_the_splitters_sizer(
    markdown: str, size: tuple[int, int]
) -> None:
    chunk_tokens, overlap_tokens = size
    assert slices_count_as_whole_text(_tokenizer())
    library = MarkdownSplitter.from_huggingface_tokenizer(_tokenizer(), chunk_tokens, overlap=overlap_tokens)
    expected = [
        (start + len(piece) - len(piece.lstrip()), piece.strip())
        for start, piece in library.chunk_indices(markdown)
        if piece.strip()
    ]
    chunks = _chunker(chunk_tokens, overlap_tokens).chunk(markdown)
    assert [(c.start, c.text) for c in chunks] == expected
