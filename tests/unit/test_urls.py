from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.provisional import urls

from crawldex.errors import InvalidDocumentError
from crawldex.urls import (
    _ALREADY_CANONICAL,
    _canonical,
    _normalize_each,
    _parsed_canonical,
    canonicalize_url,
    document_id,
    domain_of,
    normalize_path,
    point_id,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("HTTPS://Example.COM", "https://example.com/"),
        ("https://example.com:443/a?b=2&a=1#frag", "https://example.com/a?a=1&b=2"),
        ("http://example.com:80/", "http://example.com/"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("https://example.com/a/", "https://example.com/a/"),
        ("https://example.com/a%7Eb", "https://example.com/a~b"),
        ("https://example.com/caf\u00e9", "https://example.com/caf%C3%A9"),
        ("  https://example.com/x  ", "https://example.com/x"),
        ("https://b\u00fccher.example/", "https://xn--bcher-kva.example/"),
        ("https://[::1]:8443/p", "https://[::1]:8443/p"),
        # RFC 3986 escapes: unreserved ones decoded, the others kept and upper-cased.
        ("https://a.example/100%2541", "https://a.example/100%2541"),
        ("https://a.example/50%25off", "https://a.example/50%25off"),
        ("https://a.example/a%2fb", "https://a.example/a%2Fb"),
        ("https://a.example/%e2%82%ac", "https://a.example/%E2%82%AC"),
        ("https://a.example/100%", "https://a.example/100%25"),
    ],
)
def test_canonical_form(raw: str, canonical: str) -> None:
    assert canonicalize_url(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("ftp://example.com/x", "http or https"),
        ("example.com/page", "http or https"),
        ("https:///path-only", "no host"),
        ("https://example.com:99999/", "not valid"),
        ("https://example.com/" + "a" * 9000, "longer than"),
        ("https://example.com/\ud800", "not valid"),  # a lone surrogate: no UTF-8 to percent-encode
        ("https://example.com/?q=\udfff", "not valid"),
        ("https://exa\ud800mple.com/", "not valid"),
    ],
)
def test_refuses_urls_it_cannot_index(raw: str, reason: str) -> None:
    with pytest.raises(InvalidDocumentError, match=reason):
        canonicalize_url(raw)


def test_a_refused_url_is_refused_every_time_and_a_str_subclass_canonicalizes_as_its_text() -> None:
    """Canonical forms are remembered for the URLs seen last; a refusal never is."""
    for _ in range(3):
        with pytest.raises(InvalidDocumentError, match="http or https"):
            canonicalize_url("ftp://example.com/a")

    class Url(str):
        """A str subclass, as a caller's own URL type may be."""

    assert canonicalize_url(Url("HTTPS://Example.com:443/a?b=2&a=1")) == "https://example.com/a?a=1&b=2"
    assert type(canonicalize_url(Url("https://example.com/b"))) is str


def test_ids_are_stable_and_distinct() -> None:
    doc = document_id("https://example.com/a")
    assert doc == document_id("https://example.com/a")
    assert doc != document_id("https://example.com/b")
    assert point_id(doc, 0) == point_id(doc, 0)
    assert point_id(doc, 0) != point_id(doc, 1)
    # Pinned: changing the namespace would silently re-key every deployment's index.
    assert str(doc) == "702c0754-c9fc-57e7-8f1e-eee6b96cce94"


def test_domain_drops_www() -> None:
    assert domain_of("https://www.example.com/x") == "example.com"
    assert domain_of("https://docs.example.com/x") == "docs.example.com"


@given(st.text(max_size=200))
def test_canonicalize_never_crashes_and_is_idempotent(raw: str) -> None:
    for candidate in (raw, "https://example.com/" + raw, "http://" + raw):
        try:
            once = canonicalize_url(candidate)
        except InvalidDocumentError:
            continue
        assert canonicalize_url(once) == once


def test_an_encoded_slash_is_not_a_slash() -> None:
    assert document_id(canonicalize_url("https://a.example/a%2Fb")) != document_id(
        canonicalize_url("https://a.example/a/b")
    )


@given(st.text(alphabet="%/aZ09~-.25FfEe\u00e9 ?=&#", max_size=40))
def test_percent_escapes_normalise_idempotently(path: str) -> None:
    try:
        once = canonicalize_url("https://a.example/" + path)
    except InvalidDocumentError:
        return
    assert canonicalize_url(once) == once


@given(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
    | st.from_regex(r"[/a-z0-9._~%:@!$&'()*+,;=-]*", fullmatch=True)
)
def test_an_already_normal_path_is_returned_as_the_char_by_char_normalisation_would(path: str) -> None:
    assert normalize_path(path) == _normalize_each(path)


# URLs built part by part, each part drawn from arbitrary text: the canonical form is a fixed point.
_label = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters=".:/?#[]@\\"),
    min_size=1,
    max_size=12,
)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.lists(st.from_regex(r"[A-Za-z0-9-]{1,10}", fullmatch=True), min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
_built_urls = st.builds(
    "{scheme}://{userinfo}{host}{port}{path}{query}{fragment}".format_map,
    st.fixed_dictionaries(
        {
            "scheme": st.sampled_from(["http", "https", "HTTP", "Https", "ftp", ""]),
            "userinfo": st.sampled_from(["", "user@", "user:pw@"]),
            "host": _hosts | _hosts.map(str.upper),
            "port": st.none().map(lambda _: "") | st.integers(0, 70000).map(":{}".format),
            "path": st.lists(
                st.text(max_size=8) | st.from_regex(r"%[0-9A-Fa-f]{2}", fullmatch=True), max_size=4
            ).map(lambda segments: "/" + "/".join(segments) if segments else ""),
            "query": st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=4).map(
                lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else ""
            ),
            "fragment": st.text(max_size=5).map(lambda text: f"#{text}" if text else ""),
        }
    ),
)


@given(_built_urls)
@example("HTTP://Example.COM:80/a/../b/%7e?b=2&a=1&a=0#top")
@example("https://[::FFFF:10.0.0.1]:443/%2f%2F?=&=#")
def test_canonical_form_of_built_urls_is_a_fixed_point(url: str) -> None:
    try:
        once = canonicalize_url(url)
    except InvalidDocumentError:
        return
    assert canonicalize_url(once) == once
    assert "#" not in once
    scheme, _, rest = once.partition("://")
    assert scheme in ("http", "https")
    assert rest.split("/", 1)[0] == rest.split("/", 1)[0].lower()


@given(urls())
def test_every_web_url_is_accepted_and_its_canonical_form_is_a_fixed_point(url: str) -> None:
    once = canonicalize_url(url)
    assert canonicalize_url(once) == once
    assert document_id(once) == document_id(canonicalize_url(once))


@given(_built_urls | urls() | st.from_regex(_ALREADY_CANONICAL, fullmatch=True))
@example("http://example.com")
@example("https://example.com.")
@example("https://example.com./a")
@example("https://a..b/")
@example("https://user@example.com/a")
@example("https://example.com:443/a")
@example("https://example.com//a/./b/../c")
@example("https://example.com/a?")
@example("https://example.com/a#")
@example("https://example.com/a%7e")
@example("https://example.com/a b")
@example("https://example.com/a\tb")
@example(" https://example.com/a")
@example("https://Example.com/A")
@example("https://example.com/" + "a" * 8200)
def test_the_shortcut_for_an_already_canonical_url_answers_as_the_parse_does(url: str) -> None:
    uncached = _canonical.__wrapped__
    try:
        expected = _parsed_canonical(url)
    except InvalidDocumentError:
        with pytest.raises(InvalidDocumentError):
            uncached(url)
        return
    assert uncached(url) == expected
