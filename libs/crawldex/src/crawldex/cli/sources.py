"""Pages to import from files: JSON Lines, and directories of markdown files.

Every record becomes either a page or a reason it was skipped, with where it was found (a line number, a
file); a bad record never stops the import.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crawldex.cli.common import validation_message
from crawldex.models import PageDocument, utc_now
from crawldex.urls import canonicalize_url

IMPORT_SOURCE = "import"  # PageDocument.source of imported pages
MARKDOWN_SUFFIXES = (".md", ".markdown")
_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


@dataclass(frozen=True)
class SourceItem:
    where: str  # "line 4", "guide/setup.md", a URL: for the report
    page: PageDocument | None = None
    problem: str | None = None  # why it was skipped


class ImportedPage(BaseModel):
    """One page as an import file gives it; the same rules as the index API's request body."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1, max_length=8192)
    markdown: str
    title: str | None = Field(default=None, max_length=4096)
    description: str | None = Field(default=None, max_length=16384)
    language: str | None = Field(default=None, max_length=64)
    crawl_id: str | None = Field(default=None, max_length=256)

    @field_validator("url")
    @classmethod
    def _indexable_url(cls, value: str) -> str:
        canonicalize_url(value)  # InvalidDocumentError is a ValueError: it names the problem
        return value

    @field_validator("markdown")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("markdown must not be blank")
        return value

    def to_page(self, received_at: datetime) -> PageDocument:
        return PageDocument(
            url=self.url,
            markdown=self.markdown,
            title=self.title,
            description=self.description,
            language=self.language,
            crawl_id=self.crawl_id,
            source=IMPORT_SOURCE,
            received_at=received_at,
        )


def _item(where: str, fields: dict[str, object], received_at: datetime) -> SourceItem:
    try:
        return SourceItem(where, page=ImportedPage.model_validate(fields).to_page(received_at))
    except ValidationError as exc:
        return SourceItem(where, problem=validation_message(exc))


# ---- JSON Lines ----


def scan_file(path: Path) -> tuple[str, int]:
    """The file's SHA-256 and its number of lines, in one pass."""
    digest = hashlib.sha256()
    lines = 0
    with path.open("rb") as stream:
        for line in stream:
            digest.update(line)
            lines += 1
    return digest.hexdigest(), lines


def read_jsonl(path: Path, *, crawl_id: str | None) -> Iterator[SourceItem]:
    """One item per non-blank line: ``{"url", "markdown", "title"?, "description"?, "language"?,
    "crawl_id"?}``; other keys are ignored. ``crawl_id`` applies where a line has none."""
    received_at = utc_now()
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            where = f"line {number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield SourceItem(where, problem=f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield SourceItem(where, problem=f"not JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(record, dict):
                yield SourceItem(where, problem=f"not a JSON object but {type(record).__name__}")
                continue
            if crawl_id is not None and record.get("crawl_id") is None:
                record["crawl_id"] = crawl_id
            yield _item(where, record, received_at)


# ---- a directory of markdown files ----


def markdown_files(root: Path) -> list[Path]:
    """The markdown files under ``root``, in path order; hidden files and directories (.git) are skipped."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in MARKDOWN_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def scan_markdown_files(root: Path, files: Sequence[Path]) -> str:
    """A SHA-256 over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\x00")
        digest.update(path.read_bytes())
        digest.update(b"\x00")
    return digest.hexdigest()


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """``---`` front matter at the very top → (its ``key: value`` scalars, the markdown after it).

    Only flat scalars are read (url, title, description, language, ...); nested YAML is ignored. A block
    opened with ``---`` but never closed (``---`` or ``...``) raises ValueError.
    """
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, text
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            fields: dict[str, str] = {}
            for entry in lines[1:index]:
                if not entry.strip() or entry[0] in " \t#-":  # blank, nested, comment, list item
                    continue
                key, colon, value = entry.partition(":")
                if colon:
                    fields[key.strip().lower()] = _unquote(value.strip())
            return fields, "".join(lines[index + 1 :])
    raise ValueError("front matter opened with '---' is never closed")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    if " #" in value:  # a YAML comment after a plain value
        value = value.split(" #", 1)[0].rstrip()
    return value


def url_for(relative: PurePosixPath, base_url: str) -> str:
    """``guide/setup.md`` → ``BASE/guide/setup``; ``guide/index.md`` → ``BASE/guide/``; ``index.md`` → ``BASE/``."""
    parts = list(relative.with_suffix("").parts)
    if parts and parts[-1].lower() == "index":
        parts[-1] = ""
    return base_url.rstrip("/") + "/" + "/".join(quote(part) for part in parts)


def read_markdown_files(
    root: Path, files: Sequence[Path], *, base_url: str | None, crawl_id: str | None
) -> Iterator[SourceItem]:
    """One item per file: url from the front matter's ``url:``, else ``base_url`` + the file's path;
    title from the front matter, else the first ``# heading``; description and language (or lang) from
    the front matter."""
    received_at = utc_now()
    for path in files:
        relative = PurePosixPath(path.relative_to(root).as_posix())
        where = str(relative)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            yield SourceItem(where, problem=f"not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        except OSError as exc:
            yield SourceItem(where, problem=f"cannot read: {exc.strerror or exc}")
            continue
        try:
            front, markdown = split_front_matter(text)
        except ValueError as exc:
            yield SourceItem(where, problem=str(exc))
            continue
        url = front.get("url") or (url_for(relative, base_url) if base_url else None)
        if not url:
            yield SourceItem(
                where, problem="no url: its front matter has no url: and --base-url is not given"
            )
            continue
        heading = _H1.search(markdown)
        fields: dict[str, object] = {
            "url": url,
            "markdown": markdown,
            "title": front.get("title") or (heading.group(1) if heading else None),
            "description": front.get("description") or None,
            "language": front.get("language") or front.get("lang") or None,
            "crawl_id": front.get("crawl_id") or crawl_id,
        }
        yield _item(where, fields, received_at)
