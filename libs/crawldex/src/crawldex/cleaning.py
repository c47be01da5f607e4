"""Markdown cleaning that keeps the structure the markdown splitter needs.

Crawled markdown carries noise that wastes tokens (images as data URIs, empty links, runs of blank
lines, control characters) but its headings, lists, tables and code blocks are what the splitter
uses to find good boundaries, so they are left as they are.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_DATA_URI_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*data:[^)]*\)")
_EMPTY_LINK = re.compile(r"(?<!!)\[\s*\]\([^)]*\)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_markdown(markdown: str) -> str:
    """Normalise crawled markdown without flattening it."""
    text = unicodedata.normalize("NFC", markdown)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _DATA_URI_IMAGE.sub(lambda m: m.group(1), text)  # inline image bytes: keep the alt text
    text = _EMPTY_LINK.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def content_hash(
    cleaned_markdown: str,
    *,
    url: str,
    title: str | None,
    description: str | None,
    language: str | None,
    index_signature: str = "",
) -> str:
    """Hash of what a page's points hold: text, metadata, and how they were made.

    ``index_signature`` names the index set-up (collection, model, chunking, BM25 parameters): a
    page indexed under another set-up is not "unchanged", even with the same text. The crawl id and
    times are left out. A page whose hash is unchanged needs no re-embedding.
    """
    digest = hashlib.sha256()
    for part in (index_signature, url, title or "", description or "", language or "", cleaned_markdown):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()
