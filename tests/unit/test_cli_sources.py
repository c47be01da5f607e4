"""What the operator CLI reads: front matter, file paths as URLs, sitemaps (parsing and walking indexes)."""

from __future__ import annotations

import gzip
from pathlib import PurePosixPath

import pytest
from pydantic import ValidationError

from crawldex.adapters.fetching import FetchError
from crawldex.cli.common import validation_message
from crawldex.cli.sitemap import MAX_NESTING, SitemapError, list_pages, parse_sitemap
from crawldex.cli.sources import ImportedPage, split_front_matter, url_for

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def urlset(*locations: str) -> bytes:
    entries = "".join(f"<url><loc>{loc}</loc><lastmod>2026-01-01</lastmod></url>" for loc in locations)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset {NS}>{entries}</urlset>'.encode()


def index(*locations: str) -> bytes:
    entries = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locations)
    return f"<sitemapindex {NS}>{entries}</sitemapindex>".encode()


def test_front_matter_scalars_and_body() -> None:
    text = (
        "---\n"
        "url: https://docs.example.com/a\n"
        "title: 'A: the first'\n"
        'description: "Quoted # not a comment"\n'
        "language: en # a comment\n"
        "tags:\n"
        "  - nested\n"
        "---\n"
        "# Heading\n\nBody.\n"
    )
    fields, body = split_front_matter(text)
    assert fields == {
        "url": "https://docs.example.com/a",
        "title": "A: the first",
        "description": "Quoted # not a comment",
        "language": "en",
        "tags": "",
    }
    assert body == "# Heading\n\nBody.\n"


def test_front_matter_absent_or_closed_by_dots() -> None:
    assert split_front_matter("# Only markdown\n---\n") == ({}, "# Only markdown\n---\n")
    assert split_front_matter("---\ntitle: T\n...\nbody") == ({"title": "T"}, "body")
    with pytest.raises(ValueError, match="never closed"):
        split_front_matter("---\ntitle: T\nbody without an end")


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("guide/setup.md", "https://d.example/docs/guide/setup"),
        ("guide/index.md", "https://d.example/docs/guide/"),
        ("index.md", "https://d.example/docs/"),
        ("notes/read me.markdown", "https://d.example/docs/notes/read%20me"),
    ],
)
def test_file_paths_become_urls_under_the_base(relative: str, expected: str) -> None:
    assert url_for(PurePosixPath(relative), "https://d.example/docs/") == expected
    assert url_for(PurePosixPath(relative), "https://d.example/docs") == expected


def test_imported_page_rules_match_the_index_api() -> None:
    with pytest.raises(ValidationError) as caught:
        ImportedPage.model_validate({"url": "javascript:alert(1)", "markdown": "  ", "title": 3})
    message = validation_message(caught.value)
    assert "url: url must be http or https" in message
    assert "markdown: markdown must not be blank" in message
    assert "title: Input should be a valid string" in message


def test_a_urlset_lists_its_pages_in_order() -> None:
    parsed = parse_sitemap(urlset("https://a.example/1", "https://a.example/2"))
    assert not parsed.is_index
    assert parsed.locations == ["https://a.example/1", "https://a.example/2"]


def test_a_sitemap_index_and_gzip() -> None:
    parsed = parse_sitemap(gzip.compress(index("https://a.example/s1.xml")))
    assert parsed.is_index
    assert parsed.locations == ["https://a.example/s1.xml"]


def test_only_the_loc_of_each_entry_counts() -> None:
    data = (
        f'<urlset {NS} xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">'
        "<url><loc> https://a.example/page </loc>"
        "<image:image><image:loc>https://a.example/cat.png</image:loc></image:image></url>"
        "<url><loc></loc></url></urlset>"
    ).encode()
    assert parse_sitemap(data).locations == ["https://a.example/page"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
            b"<urlset><url><loc>&lol2;</loc></url></urlset>",
            "DTD",
        ),
        (b"<html><body>not a sitemap</body></html>", "root element is <html>"),
        (b"<urlset><url><loc>https://a.example/", "not well-formed"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
    ],
)
def test_what_is_not_a_readable_sitemap(data: bytes, reason: str) -> None:
    with pytest.raises(SitemapError, match=reason):
        parse_sitemap(data)


async def test_walking_an_index_collects_each_page_once_and_reports_problems() -> None:
    documents = {
        "https://a.example/s1.xml": urlset("https://a.example/1", "https://a.example/2", "ftp://a.example/x"),
        "https://a.example/s2.xml": urlset("https://a.example/2#again", "https://a.example/3"),
        "https://a.example/html": b"<html></html>",
    }
    requested: list[str] = []

    async def download(url: str) -> bytes:
        requested.append(url)
        if url not in documents:
            raise FetchError(f"{url} answered HTTP 404", retryable=False, status_code=404)
        return documents[url]

    top = index(
        "https://a.example/s1.xml",
        "https://a.example/s2.xml",
        "https://a.example/s1.xml",  # listed twice: read once
        "https://a.example/missing.xml",
        "https://a.example/html",
    )
    listing = await list_pages("sitemap.xml", top, download)
    assert listing.pages == ["https://a.example/1", "https://a.example/2", "https://a.example/3"]
    assert listing.duplicates == 1
    assert listing.sitemaps_read == 3
    assert requested.count("https://a.example/s1.xml") == 1
    problems = dict(listing.problems)
    assert "ftp" in problems["https://a.example/s1.xml entry 3"]
    assert "404" in problems["https://a.example/missing.xml"]
    assert "root element is <html>" in problems["https://a.example/html"]

    # Same documents, same digest (the import's delivery id); different documents, another one.
    again = await list_pages("sitemap.xml", top, download)
    assert again.digest == listing.digest
    other = await list_pages("sitemap.xml", index("https://a.example/s1.xml"), download)
    assert other.digest != listing.digest


async def test_indexes_nested_too_deep_are_not_followed() -> None:
    async def download(url: str) -> bytes:
        level = int(url.rsplit("/", 1)[1])
        return index(f"https://a.example/{level + 1}")

    listing = await list_pages("https://a.example/0", index("https://a.example/1"), download)
    assert listing.pages == []
    assert listing.sitemaps_read == MAX_NESTING
    assert any("nested deeper" in why for _, why in listing.problems)
