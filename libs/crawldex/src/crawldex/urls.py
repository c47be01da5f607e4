"""URL identity: the canonical form of a page's URL and the ids derived from it.

A document *is* its canonical URL, so every path into the index (webhook, API, rescrape) must agree
on this one function.
"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from crawldex.errors import InvalidDocumentError

# Fixed namespace: changing it would re-key every document of every deployment.
DOCUMENT_NAMESPACE = uuid.UUID("6f0c1b8e-3d5f-5b2a-9c47-0d1f6e2a7b90")

_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192


def canonicalize_url(url: str) -> str:
    """Return the canonical form of an http(s) URL.

    Lower-cased scheme and host, default port dropped, fragment dropped, query parameters sorted,
    path percent-encoding normalised, and an empty path written as ``/``. A trailing slash on a
    non-root path is kept: ``/a`` and ``/a/`` may be different pages on real servers.
    """
    if not isinstance(url, str):
        raise InvalidDocumentError("url must be a string")
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
    path = quote(unquote(parts.path), safe="/:@!$&'()*+,;=-._~%") or "/"
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)), doseq=True)
    return urlunsplit((scheme, netloc, path, query, ""))


def domain_of(canonical_url: str) -> str:
    """Host of a canonical URL without a leading ``www.``; what the domain filter matches."""
    host = urlsplit(canonical_url).hostname or ""
    return host.removeprefix("www.")


def document_id(canonical_url: str) -> uuid.UUID:
    return uuid.uuid5(DOCUMENT_NAMESPACE, canonical_url)


def point_id(doc_id: uuid.UUID, chunk_index: int) -> uuid.UUID:
    return uuid.uuid5(doc_id, str(chunk_index))
