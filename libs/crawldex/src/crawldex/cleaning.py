"""Markdown cleaning that keeps the structure the markdown splitter needs.

Crawled markdown carries noise that wastes tokens (images as data URIs, empty links, runs of blank
lines, control characters) but its headings, lists, tables and code blocks are what the splitter
uses to find good boundaries, so they are left as they are.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import deque

_DATA_TARGET = re.compile(r"\s*data:")
_SPECIAL = re.compile(r"[\[\]!]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_markdown(markdown: str) -> str:
    """Normalise crawled markdown without flattening it.

    Idempotent: cleaning cleaned markdown changes nothing.
    """
    text = markdown.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = drop_inline_images_and_empty_links(text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    # Last: a removal above can bring a letter and its combining accent together ("e\u200b\u0301").
    text = unicodedata.normalize("NFC", text)
    return text.strip()


def drop_inline_images_and_empty_links(text: str) -> str:
    """Replace images inlined as data URIs (``![alt](data:...)``) by their alt text and drop empty links
    (``[](url)``, ``[ ](url)``, but not the image ``![](url)``), until none is left.

    A removal can make another one: ``[[](a)](b)`` holds an empty link only once the inner one is gone.
    Repeating a regular expression until nothing changes would take one pass per level of nesting
    (quadratic in crafted input), so this is one left-to-right pass with the open brackets on a stack.
    Where an image and an empty link compete for the same ``](...)``, the image wins, and of several
    images, the leftmost (as a regular expression would match them).
    """
    return _BracketScanner().run(text)


class _BracketScanner:
    def __init__(self) -> None:
        # The text as elements: "[", "]" and "!" alone, runs of other text; "" where an image's "![" was.
        self.out: list[str] = []
        self.links: list[int] = []  # positions in out of open "[" (some may have become images, or gone)
        self.images: deque[int] = deque()  # positions in out of open "[" right after a "!", ascending
        # For a removed element: an element before it with only removed ones between (shortened as it
        # is followed), so that finding what precedes a bracket does not walk the same removals again.
        self.skip: dict[int, int] = {}

    def run(self, text: str) -> str:
        out, links, images = self.out, self.links, self.images
        end = len(text)
        close = -1  # the next ")" in text at or after the current target; end when there is none
        position = 0
        while position < end:
            special = _SPECIAL.search(text, position)
            if special is None:
                out.append(text[position:])
                break
            if special.start() > position:  # plain text between brackets: one element
                out.append(text[position : special.start()])
                position = special.start()
            char = text[position]
            if char == "[":
                (images if out and out[-1] == "!" else links).append(len(out))
            elif char == "]":
                if position + 1 < end and text[position + 1] == "(":
                    if close < position + 2:
                        found = text.find(")", position + 2)
                        close = found if found >= 0 else end
                    if close < end:
                        if images and _DATA_TARGET.match(text, position + 2, close):
                            self._replace_image()
                            position = close + 1
                            continue
                        if self._empty_link_open():
                            self._truncate(links.pop())
                            position = close + 1
                            continue
                # A "]" that closes nothing here ends every open bracket: text after it can be neither
                # an alt text (no "]" inside) nor the inside of an empty link.
                links.clear()
                images.clear()
            out.append(char)
            position += 1
        return "".join(out)

    def _replace_image(self) -> None:
        out = self.out
        opened = self.images.popleft()
        bang = self._real_before(opened)  # the "!" (removals may lie between it and the "[")
        self._remove(bang)
        self._remove(opened)
        first = opened + 1
        while first < len(out) and out[first] == "":
            first += 1
        if first == len(out):  # no alt text
            self._truncate(bang)
            return
        # The alt text now follows what preceded the "!": a "!" there makes the alt's leading "[" an image.
        before = self._real_before(bang)
        if out[first] == "[" and before >= 0 and out[before] == "!":
            self.images.appendleft(first)

    def _empty_link_open(self) -> bool:
        """Whether the innermost open "[" is an empty link's: a real "[", not after a "!", blank inside."""
        out, links = self.out, self.links
        while links and (links[-1] >= len(out) or out[links[-1]] != "["):
            links.pop()  # became an image's "[" and was replaced
        if not links:
            return False
        opened = links[-1]
        before = self._real_before(opened)
        if before >= 0 and out[before] == "!":
            return False
        return all(char == "" or char.isspace() for char in out[opened + 1 :])

    def _remove(self, position: int) -> None:
        self.out[position] = ""
        self.skip[position] = position - 1

    def _real_before(self, position: int) -> int:
        """The position of the last element before ``position`` not removed; -1 if none."""
        out, skip = self.out, self.skip
        walked = []
        position -= 1
        while position >= 0 and out[position] == "":
            walked.append(position)
            position = skip[position]
        for removed in walked:
            skip[removed] = position
        return position

    def _truncate(self, position: int) -> None:
        """Drop ``out[position:]`` and the removed positions that then end it."""
        out = self.out
        del out[position:]
        while out and out[-1] == "":
            out.pop()


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
