"""URL identity: the canonical form of a page's URL and the ids derived from it.

A document *is* its canonical URL, so every path into the index (webhook, API, rescrape) must agree
on this one function.
"""

from __future__ import annotations

import functools
import re
import uuid
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from crawldex.errors import InvalidDocumentError

# Fixed namespace: changing it would re-key every document of every deployment.
DOCUMENT_NAMESPACE = uuid.UUID("6f0c1b8e-3d5f-5b2a-9c47-0d1f6e2a7b90")

_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192
# A character a normal path holds as it is (RFC 3986: unreserved, sub-delims, ":", "@", "/"), as a regex class.
_NORMAL_PATH_CHARACTER = r"[A-Za-z0-9/:@!$&'()*+,;=\-._~]"


def canonicalize_url(url: str) -> str:
    """Return the canonical form of an http(s) URL.

    Lower-cased scheme and host, default port dropped, fragment dropped, query parameters sorted,
    path percent-encoding normalised, and an empty path written as ``/``. A trailing slash on a
    non-root path is kept: ``/a`` and ``/a/`` may be different pages on real servers.
    """
    if not isinstance(url, str):
        raise InvalidDocumentError("url must be a string")
    return _canonical(url)


# A URL in its canonical form already, or for want of the "/" of an empty path: a lower-case http(s) scheme and
# ASCII host (no port, user info or trailing dot), a path with nothing to escape or decode, no query or
# fragment, no whitespace. Crawlers report most URLs so, and each page's is new to `_canonical`'s cache: this
# one expression, in C, answers what urllib's parse took ~700 bytecodes for, 6 % of a webhook's Python
# (tests/unit/test_urls.py holds the two to the same answers).
_ALREADY_CANONICAL = re.compile(rf"https?://[a-z0-9-]+(?:\.[a-z0-9-]+)*(/{_NORMAL_PATH_CHARACTER}*)?")


# A page's URL is canonicalized where it is validated, where its job is named and where its delivery is
# recorded: at ~9 us a call, the webhook's second and third were 5 % of its CPU. Few entries suffice (the calls
# for a page come microseconds apart) and keep the cache small whatever URLs a sender sends.
@functools.lru_cache(maxsize=256)
def _canonical(url: str) -> str:
    if len(url) <= MAX_URL_LENGTH:
        already = _ALREADY_CANONICAL.fullmatch(url)
        if already is not None:
            text = str.__str__(url)  # a plain str, as the parse returns, for a str subclass too
            return text if already.group(1) else text + "/"
    return _parsed_canonical(url)


def _parsed_canonical(url: str) -> str:
    raw = url.strip()
    if not raw:
        raise InvalidDocumentError("url is empty")
    if len(raw) > MAX_URL_LENGTH:
        raise InvalidDocumentError(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise InvalidDocumentError(f"url is not valid: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidDocumentError(f"url must be http or https, got {parts.scheme or 'no scheme'!r}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidDocumentError("url has no host")
    try:
        host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
    except UnicodeError as exc:
        raise InvalidDocumentError(f"url host is not valid: {exc}") from exc
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    try:
        path = normalize_path(parts.path) or "/"
        query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)), doseq=True)
    except UnicodeError as exc:  # a lone surrogate, which percent-encoding as UTF-8 cannot spell
        raise InvalidDocumentError(f"url is not valid: {exc}") from exc
    return urlunsplit((scheme, netloc, path, query, ""))


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters a path may hold as they are (RFC 3986: unreserved, sub-delims, ":", "@", "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# A path of unreserved and safe characters only, no escape: already normal (most paths are).
_NORMAL_PATH = re.compile(f"{_NORMAL_PATH_CHARACTER}*")


def normalize_path(path: str) -> str:
    """RFC 3986 normalisation of a path: escapes of unreserved characters decoded, the other escapes
    upper-cased and kept (``%2F`` is not ``/``, ``%25`` is not ``%``), everything else percent-encoded
    as UTF-8. Idempotent by construction."""
    if _NORMAL_PATH.fullmatch(path):  # nothing to decode or encode; checked in C, not a char at a time
        return path
    return _normalize_each(path)


def _normalize_each(path: str) -> str:
    out: list[str] = []
    position = 0
    while position < len(path):
        match = _ESCAPE.match(path, position)
        if match:
            char = chr(int(match.group(1), 16))
            out.append(char if char in _UNRESERVED else f"%{match.group(1).upper()}")
            position = match.end()
            continue
        out.append(quote(path[position], safe=_PATH_SAFE))  # a lone "%" becomes "%25"
        position += 1
    return "".join(out)


def domain_of(canonical_url: str) -> str:
    """Host of a canonical URL without a leading ``www.``; what the domain filter matches."""
    host = urlsplit(canonical_url).hostname or ""
    return host.removeprefix("www.")


def document_id(canonical_url: str) -> uuid.UUID:
    return uuid.uuid5(DOCUMENT_NAMESPACE, canonical_url)


def point_id(doc_id: uuid.UUID, chunk_index: int) -> uuid.UUID:
    return uuid.uuid5(doc_id, str(chunk_index))
