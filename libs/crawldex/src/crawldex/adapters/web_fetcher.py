"""The built-in page fetcher: a plain HTTP GET with an SSRF guard, HTML turned into markdown.

Used when no Firecrawl is configured. Every hop of a redirect chain (followed here, never by httpx) is
resolved, checked by `crawldex.ssrf` and then requested from the checked IP address itself, with the
original ``Host`` header and, for https, the original name as TLS SNI and certificate name; the name is
never resolved a second time, so DNS rebinding cannot swap the address after the check. No proxy from
the environment is used (it would make the connection in our place, out of the guard's sight), no
cookies are kept between requests, and pooled connections are not reused across hosts.

Limits: ``fetch_timeout_seconds`` for the whole chain (DNS, connections, body), ``fetch_max_bytes`` of
decoded body (read as a stream and abandoned past the limit), ``fetch_max_redirects``; only HTML,
XHTML, plain text and markdown are accepted. 404/410 come back as a gone page; 408, 429, 5xx, timeouts
and connection failures raise a retryable `FetchError`, every other failure a final one. Nothing is
retried here: the job layer retries.
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar, CookiePolicy
from typing import Final, Self
from urllib.request import Request as UrllibRequest

import httpx
from bs4 import BeautifulSoup, Tag
from markdownify import ATX, MarkdownConverter

from crawldex.adapters.fetching import GONE_STATUSES, FetchedPage, FetchError
from crawldex.config import Settings
from crawldex.ssrf import AllowList, Resolver, check_addresses, resolve_host

__all__ = [
    "ALLOWED_CONTENT_TYPES",
    "DROPPED_ELEMENTS",
    "BuiltinFetcher",
    "ConvertedHtml",
    "html_to_markdown",
]

ALLOWED_CONTENT_TYPES: Final = frozenset(
    {"text/html", "application/xhtml+xml", "text/plain", "text/markdown"}
)
HTML_CONTENT_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
# Elements whose text is not page content; removed before conversion.
DROPPED_ELEMENTS: Final = (
    "script",
    "style",
    "noscript",
    "template",
    "iframe",
    "svg",
    "nav",
    "footer",
    "object",
    "embed",
    "canvas",
)
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
ACCEPT: Final = "text/html,application/xhtml+xml,text/markdown;q=0.9,text/plain;q=0.8"
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}")
_CODE_LANGUAGE = re.compile(r"^(?:language|lang)-([\w+#.-]+)$")


@dataclass(frozen=True)
class ConvertedHtml:
    markdown: str
    title: str | None
    description: str | None
    language: str | None


@dataclass(frozen=True)
class _Download:
    """The last hop's answer: a gone status (no body read) or a body within the limits."""

    url: httpx.URL
    status_code: int
    media_type: str = ""
    charset: str | None = None
    body: bytes = b""


class _NoCookies(CookiePolicy):
    """Neither store nor send cookies: each fetch is independent of every other one."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Cookie, request: UrllibRequest) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: UrllibRequest) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: UrllibRequest) -> bool:
        return False

    def path_return_ok(self, path: str, request: UrllibRequest) -> bool:
        return False


class BuiltinFetcher:
    """`crawldex.adapters.fetching.PageFetcher` over plain HTTP(S), guarded against SSRF."""

    def __init__(
        self,
        *,
        user_agent: str,
        timeout_seconds: float,
        max_bytes: int,
        max_redirects: int,
        allowed_hosts: Iterable[str] = (),
        resolver: Resolver = resolve_host,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``resolver`` and ``ssl_context`` exist for tests (a name for a local server, its own CA)."""
        if timeout_seconds <= 0 or max_bytes <= 0 or max_redirects < 0:
            raise ValueError("timeout_seconds and max_bytes must be positive, max_redirects not negative")
        self._allow = AllowList.parse(allowed_hosts)
        self._resolver = resolver
        self._timeout = timeout_seconds
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._client = httpx.AsyncClient(
            headers={"User-Agent": user_agent, "Accept": ACCEPT},
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            trust_env=False,
            verify=ssl_context if ssl_context is not None else True,
            # A pooled connection is keyed by IP address alone: reusing one for another host would
            # skip that host's TLS name check.
            limits=httpx.Limits(max_keepalive_connections=0),
            cookies=CookieJar(policy=_NoCookies()),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        resolver: Resolver = resolve_host,
        ssl_context: ssl.SSLContext | None = None,
    ) -> BuiltinFetcher:
        return cls(
            user_agent=settings.fetch_user_agent,
            timeout_seconds=settings.fetch_timeout_seconds,
            max_bytes=settings.fetch_max_bytes,
            max_redirects=settings.fetch_max_redirects,
            allowed_hosts=settings.fetch_allowed_hosts,
            resolver=resolver,
            ssl_context=ssl_context,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> FetchedPage:
        download = await self._timed_download(url, ALLOWED_CONTENT_TYPES)
        final_url = str(download.url)
        if download.status_code in GONE_STATUSES:
            return FetchedPage(
                requested_url=url, url=final_url, status_code=download.status_code, markdown=""
            )
        if download.media_type in HTML_CONTENT_TYPES:
            # Parsing and converting a large page takes a while: keep it off the event loop.
            try:
                converted = await asyncio.to_thread(
                    html_to_markdown, download.body, encoding=download.charset
                )
            except RecursionError as exc:
                raise FetchError(
                    f"{final_url} is nested too deeply to convert",
                    retryable=False,
                    status_code=download.status_code,
                ) from exc
            return FetchedPage(
                requested_url=url,
                url=final_url,
                status_code=download.status_code,
                markdown=converted.markdown,
                title=converted.title,
                description=converted.description,
                language=converted.language,
            )
        return FetchedPage(
            requested_url=url,
            url=final_url,
            status_code=download.status_code,
            markdown=_decode_text(download.body, download.charset).strip(),
        )

    async def download(self, url: str, *, media_types: frozenset[str]) -> tuple[str, bytes]:
        """The final URL and body of a document that is not a page (a sitemap's XML), under the same
        guard and limits as `fetch`, if its content type is one of ``media_types``. A 404/410 raises a
        final `FetchError` here: there is no gone document to return."""
        download = await self._timed_download(url, media_types)
        if download.status_code in GONE_STATUSES:
            raise FetchError(
                f"{download.url} answered HTTP {download.status_code}",
                retryable=False,
                status_code=download.status_code,
            )
        return str(download.url), download.body

    # Internals.

    async def _timed_download(self, url: str, media_types: frozenset[str]) -> _Download:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._download(url, media_types)
        except TimeoutError as exc:
            raise FetchError(f"fetching {url} took longer than {self._timeout:g}s", retryable=True) from exc

    async def _download(self, url: str, media_types: frozenset[str]) -> _Download:
        current = _parse_url(url)
        redirects = 0
        while True:
            response = await self._send(current)
            try:
                if response.status_code not in REDIRECT_STATUSES:
                    return await self._read(current, response, media_types)
                location = response.headers.get("Location", "").strip()
                if not location:
                    raise FetchError(
                        f"{current} answered HTTP {response.status_code} without a Location",
                        retryable=False,
                        status_code=response.status_code,
                    )
                if redirects >= self._max_redirects:
                    raise FetchError(
                        f"too many redirects fetching {url} (more than {self._max_redirects})",
                        retryable=False,
                        status_code=response.status_code,
                    )
                redirects += 1
                try:
                    current = _parse_url(str(current.join(location)))
                except httpx.InvalidURL as exc:
                    raise FetchError(
                        f"{current} redirects to an invalid URL {location!r}: {exc}", retryable=False
                    ) from exc
            finally:
                await response.aclose()

    async def _send(self, url: httpx.URL) -> httpx.Response:
        """Resolve, check and connect to a checked address; the answer's body is not read yet."""
        host = url.raw_host.decode("ascii")
        addresses = await self._resolver(host)
        check_addresses(host, addresses, self._allow)
        headers = {"Host": url.netloc.decode("ascii")}
        extensions: dict[str, str] = {}
        if url.scheme == "https" and not _is_ip_literal(host):
            extensions["sni_hostname"] = host
        failures: list[str] = []
        for address in addresses:
            pinned = url.copy_with(host=str(address))
            request = self._client.build_request("GET", pinned, headers=headers, extensions=extensions)
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                # Not a byte was sent: the next address of the same host may answer.
                failures.append(f"{address}: {_describe_exception(exc)}")
            except httpx.TimeoutException as exc:
                raise FetchError(
                    f"fetching {url} timed out: {_describe_exception(exc)}", retryable=True
                ) from exc
            except httpx.TransportError as exc:
                raise FetchError(
                    f"fetching {url} failed: {_describe_exception(exc)}", retryable=True
                ) from exc
            except httpx.HTTPError as exc:
                raise FetchError(
                    f"fetching {url} failed: {_describe_exception(exc)}", retryable=False
                ) from exc
        raise FetchError(f"cannot connect to {host}: {'; '.join(failures)}", retryable=True)

    async def _read(self, url: httpx.URL, response: httpx.Response, media_types: frozenset[str]) -> _Download:
        status = response.status_code
        if status in GONE_STATUSES:
            return _Download(url=url, status_code=status)
        if status in (408, 429) or status >= 500:
            raise FetchError(f"{url} answered HTTP {status}", retryable=True, status_code=status)
        if not 200 <= status < 300:
            raise FetchError(f"{url} answered HTTP {status}", retryable=False, status_code=status)
        media_type, charset = _content_type(response.headers.get("Content-Type"))
        if media_type not in media_types:
            shown = media_type or "no content type"
            raise FetchError(
                f"{url} has {shown}; only {', '.join(sorted(media_types))} are fetched",
                retryable=False,
                status_code=status,
            )
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large(url, status)
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise self._too_large(url, status)
        except httpx.TimeoutException as exc:
            raise FetchError(f"reading {url} timed out: {_describe_exception(exc)}", retryable=True) from exc
        except httpx.DecodingError as exc:
            raise FetchError(
                f"{url} sent a body that cannot be decoded: {_describe_exception(exc)}",
                retryable=False,
                status_code=status,
            ) from exc
        except httpx.TransportError as exc:
            raise FetchError(f"reading {url} failed: {_describe_exception(exc)}", retryable=True) from exc
        return _Download(
            url=url, status_code=status, media_type=media_type, charset=charset, body=bytes(body)
        )

    def _too_large(self, url: httpx.URL, status: int) -> FetchError:
        return FetchError(
            f"{url} is too large (more than {self._max_bytes} bytes)", retryable=False, status_code=status
        )


def html_to_markdown(document: str | bytes, *, encoding: str | None = None) -> ConvertedHtml:
    """Markdown of an HTML page's content, with its title, description and language.

    Scripts, styles, navigation, footers and other non-content elements are dropped; headings (ATX),
    lists, tables, links and code blocks are kept. Bytes are decoded with ``encoding`` when given, else
    from the page's own ``<meta charset>`` (or a guess).
    """
    if isinstance(document, bytes):
        soup = BeautifulSoup(document, "html.parser", from_encoding=_known_codec(encoding))
    else:
        soup = BeautifulSoup(document, "html.parser")
    title = _text_of(soup.title) or _meta(soup, "property", "og:title") or _meta(soup, "name", "og:title")
    description = _meta(soup, "name", "description") or _meta(soup, "property", "og:description")
    language = _attribute(soup.html, "lang") or _meta(soup, "http-equiv", "content-language")
    # The head (and a title written without one) is metadata, read above, not content.
    for element in soup.find_all([*DROPPED_ELEMENTS, "head", "title"]):
        if isinstance(element, Tag) and not element.decomposed:
            element.decompose()
    root = soup.body if soup.body is not None else soup
    converter = MarkdownConverter(
        heading_style=ATX,
        bullets="-",
        table_infer_header=True,
        code_language_callback=_code_language,
        escape_underscores=False,
    )
    markdown = _BLANK_LINES.sub("\n\n", converter.convert_soup(root)).strip()
    return ConvertedHtml(markdown=markdown, title=title, description=description, language=language)


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError(f"cannot fetch {url!r}: {exc}", retryable=False) from exc
    if parsed.scheme not in ("http", "https"):
        raise FetchError(f"cannot fetch {url!r}: only http and https URLs are fetched", retryable=False)
    if not parsed.raw_host:
        raise FetchError(f"cannot fetch {url!r}: the URL has no host", retryable=False)
    return parsed


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _content_type(value: str | None) -> tuple[str, str | None]:
    """``text/html; charset="UTF-8"`` → ``("text/html", "UTF-8")``."""
    if not value:
        return "", None
    media_type, *params = value.split(";")
    charset = None
    for param in params:
        name, _, param_value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = param_value.strip().strip("\"'") or None
    return media_type.strip().lower(), charset


def _known_codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _decode_text(body: bytes, charset: str | None) -> str:
    if body.startswith(codecs.BOM_UTF8):
        return body[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    return body.decode(_known_codec(charset) or "utf-8", errors="replace")


def _text_of(tag: Tag | None) -> str | None:
    if tag is None:
        return None
    text = " ".join(tag.get_text(" ").split())
    return text or None


def _attribute(tag: Tag | None, name: str) -> str | None:
    if tag is None:
        return None
    value = tag.get(name)
    if isinstance(value, list):
        value = " ".join(value)
    if value is None:
        return None
    text = value.strip()
    return text or None


def _meta(soup: BeautifulSoup, attribute: str, wanted: str) -> str | None:
    for tag in soup.find_all("meta"):
        key = _attribute(tag, attribute)
        if key is not None and key.lower() == wanted:
            content = _attribute(tag, "content")
            if content:
                return " ".join(content.split())
    return None


def _code_language(pre: Tag) -> str | None:
    """``<pre><code class="language-python">`` (or the class on ``<pre>``) → ``python``."""
    candidates = [pre]
    code = pre.find("code")
    if isinstance(code, Tag):
        candidates.append(code)
    for tag in candidates:
        classes = tag.get("class")
        for name in classes if isinstance(classes, list) else []:
            match = _CODE_LANGUAGE.match(name)
            if match:
                return match.group(1)
    return None


def _describe_exception(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
