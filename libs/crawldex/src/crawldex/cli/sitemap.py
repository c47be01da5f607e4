"""Sitemaps (sitemaps.org): the page URLs a sitemap, or a sitemap index and its sitemaps, lists.

The XML is parsed with expat and any DTD is refused: a sitemap never needs one, and entity tricks (billion
laughs, external entities) need one. Gzipped sitemaps (``.xml.gz``) are read up to the protocol's 50 MB.
Sitemaps named by URL, including those a sitemap index lists, are downloaded by the built-in fetcher,
under the same SSRF guard and limits as page fetches.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from crawldex.adapters.fetching import FetchError
from crawldex.errors import InvalidDocumentError
from crawldex.urls import canonicalize_url

SITEMAP_MEDIA_TYPES = frozenset(
    {"application/xml", "text/xml", "application/gzip", "application/x-gzip", "application/octet-stream"}
)
MAX_SITEMAP_BYTES = 50 * 1024 * 1024  # the protocol's limit, uncompressed
MAX_NESTING = 3  # an index of sitemaps may (against the protocol) list more indexes; not deeper than this


class SitemapError(Exception):
    """Not a sitemap we can read."""


@dataclass(frozen=True)
class Sitemap:
    is_index: bool  # a <sitemapindex> (its locations are sitemaps), else a <urlset> (pages)
    locations: list[str]


def _decompress(data: bytes) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            plain = stream.read(MAX_SITEMAP_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise SitemapError(f"a broken gzip stream: {exc}") from exc
    if len(plain) > MAX_SITEMAP_BYTES:
        raise SitemapError(f"larger than {MAX_SITEMAP_BYTES} bytes uncompressed")
    return plain


def parse_sitemap(data: bytes) -> Sitemap:
    """The ``<loc>`` of every ``<url>`` (a urlset) or ``<sitemap>`` (a sitemap index), in document order."""
    data = _decompress(data)
    if len(data) > MAX_SITEMAP_BYTES:
        raise SitemapError(f"larger than {MAX_SITEMAP_BYTES} bytes")
    parser = expat.ParserCreate(namespace_separator=" ")
    path: list[str] = []
    root: list[str] = []
    locations: list[str] = []
    text: list[str] | None = None

    def refuse_dtd(*_: Any) -> None:
        raise SitemapError("it declares a DTD (<!DOCTYPE ...>), which a sitemap never needs")

    def start(name: str, _attributes: dict[str, str]) -> None:
        nonlocal text
        local = name.rsplit(" ", 1)[-1]
        if not path:
            root.append(local)
        path.append(local)
        if local == "loc" and len(path) == 3 and path[1] in ("url", "sitemap"):
            text = []

    def end(_name: str) -> None:
        nonlocal text
        if text is not None and len(path) == 3:
            locations.append("".join(text).strip())
            text = None
        path.pop()

    def characters(data: str) -> None:
        if text is not None:
            text.append(data)

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise SitemapError(f"not well-formed XML ({expat.ErrorString(exc.code)}, line {exc.lineno})") from exc
    kind = root[0] if root else ""
    if kind not in ("urlset", "sitemapindex"):
        raise SitemapError(f"its root element is <{kind}>, not <urlset> or <sitemapindex>")
    return Sitemap(is_index=kind == "sitemapindex", locations=[loc for loc in locations if loc])


Download = Callable[[str], Coroutine[Any, Any, bytes]]


@dataclass
class SitemapListing:
    """The pages of a sitemap tree, each URL once, and what could not be read."""

    pages: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    duplicates: int = 0
    sitemaps_read: int = 0
    _digest: Any = field(default_factory=hashlib.sha256, repr=False)
    _seen: set[str] = field(default_factory=set, repr=False)

    @property
    def digest(self) -> str:
        """A SHA-256 over every sitemap document read: the import's delivery id."""
        return str(self._digest.hexdigest())

    def add_sitemap(self, data: bytes) -> None:
        self._digest.update(data)
        self.sitemaps_read += 1

    def add_page(self, where: str, location: str) -> None:
        try:
            canonical = canonicalize_url(location)
        except InvalidDocumentError as exc:
            self.problems.append((where, f"{location!r}: {exc}"))
            return
        if canonical in self._seen:
            self.duplicates += 1
            return
        self._seen.add(canonical)
        self.pages.append(location)


async def list_pages(name: str, first: bytes, download: Download) -> SitemapListing:
    """Every page listed by the sitemap ``first`` (named ``name``) and the sitemaps it lists, which are
    fetched with ``download``. A nested sitemap that cannot be read is a problem of the listing; a
    ``first`` that is not a sitemap raises SitemapError."""
    listing = SitemapListing()
    sitemap = parse_sitemap(first)
    listing.add_sitemap(first)
    await _walk(name, sitemap, download, listing, depth=1, visited={name})
    return listing


async def _walk(
    name: str, sitemap: Sitemap, download: Download, listing: SitemapListing, *, depth: int, visited: set[str]
) -> None:
    if not sitemap.is_index:
        for number, location in enumerate(sitemap.locations, start=1):
            listing.add_page(f"{name} entry {number}", location)
        return
    for location in sitemap.locations:
        if location in visited:
            continue
        visited.add(location)
        if depth >= MAX_NESTING:
            listing.problems.append((location, f"sitemap indexes nested deeper than {MAX_NESTING} levels"))
            continue
        try:
            data = await download(location)
            nested = parse_sitemap(data)
        except SitemapError as exc:
            listing.problems.append((location, f"not a readable sitemap: {exc}"))
            continue
        except FetchError as exc:
            listing.problems.append((location, f"cannot download: {exc}"))
            continue
        listing.add_sitemap(data)
        await _walk(location, nested, download, listing, depth=depth + 1, visited=visited)
