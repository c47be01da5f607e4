"""BuiltinFetcher against real HTTP(S) servers of our own on 127.0.0.1.

No request may leave 127.0.0.0/8: blocked addresses must be refused before any connection, which the
autouse ``local_traffic_only`` fixture checks for every request httpx was asked to send.
"""

from __future__ import annotations

import gzip
import ipaddress
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from crawldex.adapters.fetching import BlockedAddressError, FetchError, PageFetcher
from crawldex.adapters.web_fetcher import BuiltinFetcher
from crawldex.config import Settings
from crawldex.ssrf import IPAddress, resolve_host

USER_AGENT = "crawldex-test/1.0 (+https://crawldex.test)"
LOOPBACK = ipaddress.ip_address("127.0.0.1")

PAGE_HTML = """<!doctype html>
<html lang="en-GB">
<head>
  <meta charset="utf-8">
  <title>Autoscaling   index workers</title>
  <meta name="description" content="How crawldex scales its workers">
  <meta property="og:title" content="Not this one">
  <style>body { color: red; }</style>
  <script>window.secret = "tracking-script";</script>
</head>
<body>
  <nav><a href="/">Home navigation</a></nav>
  <h1>Autoscaling</h1>
  <p>KEDA watches the <b>queue length</b> and adds <a href="/workers">workers</a>.</p>
  <h2>Steps</h2>
  <ul><li>install KEDA</li><li>apply the ScaledObject<ul><li>check the trigger</li></ul></li></ul>
  <ol><li>first</li><li>second</li></ol>
  <table>
    <thead><tr><th>Setting</th><th>Default</th></tr></thead>
    <tbody><tr><td>listLength</td><td>5</td></tr><tr><td>cooldownPeriod</td><td>300</td></tr></tbody>
  </table>
  <pre><code class="language-yaml">minReplicaCount: 0
maxReplicaCount: 10
</code></pre>
  <noscript>Please enable JavaScript</noscript>
  <template><p>template text</p></template>
  <iframe src="/ad">iframe text</iframe>
  <svg><text>svg text</text></svg>
  <footer>Copyright footer</footer>
  <script>console.log("tail-script")</script>
</body>
</html>
"""


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PageHandler)
        self.seen: list[Seen] = []
        self.sni_names: list[str | None] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that walks away mid-body (the size limit at work) is expected, not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class PageHandler(BaseHTTPRequestHandler):
    """Our test pages: one route per behaviour under test."""

    server: PageServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        segments = parts.path.strip("/").split("/")
        route = segments[0]
        if route == "page":
            self.send(200, PAGE_HTML.encode("utf-8"), "text/html; charset=utf-8")
        elif route == "host":
            host = self.headers.get("Host")
            self.send(200, f"<html><body><h1>{host}</h1></body></html>".encode(), "text/html")
        elif route == "latin1":
            html = (
                "<html><head><title>Café</title></head><body><p>Crème brûlée \u2013 naïve</p></body></html>"
            )
            self.send(200, html.encode("windows-1252"), "text/html; charset=windows-1252")
        elif route == "meta-charset":
            html = '<html><head><meta charset="iso-8859-1"><title>Grüße</title></head><body><p>Straße</p></body></html>'
            self.send(200, html.encode("iso-8859-1"), "text/html")
        elif route == "plain":
            self.send(
                200, "Grüße aus Köln\nzweite Zeile\n".encode("iso-8859-1"), "text/plain; charset=ISO-8859-1"
            )
        elif route == "markdown":
            self.send(200, b"# Notes\n\n- one\n- two\n", "text/markdown; charset=utf-8")
        elif route == "xhtml":
            body = b'<html xmlns="http://www.w3.org/1999/xhtml" lang="fr"><body><h3>Titre</h3></body></html>'
            self.send(200, body, "application/xhtml+xml")
        elif route == "status":
            self.send(int(segments[1]), b"<html><body>status page</body></html>", "text/html")
        elif route == "redirect":
            # /redirect/N redirects N times, then serves the page.
            left = int(segments[1])
            if left == 0:
                self.send(200, PAGE_HTML.encode("utf-8"), "text/html; charset=utf-8")
            else:
                self.redirect(302, f"/redirect/{left - 1}")
        elif route == "chain":
            step = segments[1]
            if step == "a":
                self.redirect(301, "b")  # relative to /chain/a
            elif step == "b":
                self.redirect(307, f"http://127.0.0.1:{self.server.port}/chain/c?x=1")
            else:
                self.redirect(308, "/page")
        elif route == "to":
            self.redirect(int(query.get("code", "302")), query["url"])
        elif route == "no-location":
            self.send(302, b"", "text/html")
        elif route == "big":
            self.send(200, b"<p>" + b"x" * 20_000 + b"</p>", "text/html")
        elif route == "big-stream":
            # No Content-Length: the body ends when the connection closes (HTTP/1.0).
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"<p>" + b"y" * 1000 + b"</p>")
        elif route == "gzip-bomb":
            compressed = gzip.compress(b"<p>" + b"z" * 200_000 + b"</p>")
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(compressed)))
            self.end_headers()
            self.wfile.write(compressed)
        elif route == "deep":
            self.send(200, b"<div>" * 5000 + b"deep" + b"</div>" * 5000, "text/html")
        elif route == "image":
            self.send(200, b"\x89PNG\r\n\x1a\n", "image/png")
        elif route == "json":
            self.send(200, b'{"a": 1}', "application/json")
        elif route == "no-type":
            self.send(200, b"<p>untyped</p>", None)
        elif route == "slow":
            time.sleep(3)
            self.send(200, b"<p>late</p>", "text/html")
        else:
            self.send(404, b"not found", "text/plain")

    def send(self, status: int, body: bytes, content_type: str | None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve(server: PageServer) -> Iterator[PageServer]:
    thread = threading.Thread(target=server.serve_forever, name="test-page-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def http_server() -> Iterator[PageServer]:
    yield from _serve(PageServer())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``pages.test`` only (no IP address in it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (Debian package openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=pages.test",
            "-addext", "subjectAltName=DNS:pages.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def https_server(tls_files: tuple[Path, Path]) -> Iterator[PageServer]:
    cert, key = tls_files
    server = PageServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember_sni(_socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        server.sni_names.append(name)

    context.sni_callback = remember_sni
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serve(server)


@pytest.fixture(autouse=True)
def local_traffic_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[httpx.URL]]:
    """Every URL httpx is asked to send; after each test, all of them must be on 127.0.0.0/8."""
    sent: list[httpx.URL] = []
    original = httpx.AsyncClient.send

    async def spy(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        sent.append(request.url)
        assert ipaddress.ip_address(request.url.host) in ipaddress.ip_network("127.0.0.0/8")
        return await original(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", spy)
    yield sent
    assert all(ipaddress.ip_address(url.host) in ipaddress.ip_network("127.0.0.0/8") for url in sent)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "fetch_allowed_hosts": ["127.0.0.1"],
        "fetch_timeout_seconds": 5.0,
        "fetch_max_bytes": 1024 * 1024,
        "fetch_max_redirects": 5,
        "fetch_user_agent": USER_AGENT,
    }
    values.update(overrides)
    return Settings(**values)


def fixed_resolver(table: dict[str, Sequence[str]], calls: list[str] | None = None) -> Any:
    """Resolves the names in ``table``; anything else goes to the system resolver (IP literals only)."""

    async def resolve(host: str) -> Sequence[IPAddress]:
        if calls is not None:
            calls.append(host)
        if host in table:
            return [ipaddress.ip_address(address) for address in table[host]]
        return await resolve_host(host)

    return resolve


@pytest.fixture
async def fetcher() -> AsyncIterator[BuiltinFetcher]:
    async with BuiltinFetcher.from_settings(settings()) as builtin:
        yield builtin


def base(server: PageServer, host: str = "127.0.0.1", scheme: str = "http") -> str:
    return f"{scheme}://{host}:{server.port}"


async def fetch_error(fetcher: BuiltinFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(url)
    return caught.value


# Pages and their conversion.


async def test_html_page_becomes_markdown(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    url = base(http_server) + "/page"

    page = await fetcher.fetch(url)

    assert (page.requested_url, page.url, page.status_code, page.gone) == (url, url, 200, False)
    assert page.title == "Autoscaling index workers"
    assert page.description == "How crawldex scales its workers"
    assert page.language == "en-GB"
    markdown = page.markdown
    assert markdown.startswith("# Autoscaling\n")
    assert "## Steps" in markdown
    assert "KEDA watches the **queue length** and adds [workers](/workers)." in markdown
    assert "- install KEDA\n- apply the ScaledObject\n  - check the trigger" in markdown
    assert "1. first\n2. second" in markdown
    assert "| Setting | Default |\n| --- | --- |\n| listLength | 5 |\n| cooldownPeriod | 300 |" in markdown
    assert "```yaml\nminReplicaCount: 0\nmaxReplicaCount: 10\n```" in markdown
    for dropped in (
        "tracking-script",
        "tail-script",
        "color: red",
        "Home navigation",
        "Copyright footer",
        "Please enable JavaScript",
        "template text",
        "iframe text",
        "svg text",
        "Not this one",
    ):
        assert dropped not in markdown
    seen = http_server.seen[-1]
    assert seen.headers["user-agent"] == USER_AGENT
    assert "text/html" in seen.headers["accept"]


async def test_fetcher_is_a_page_fetcher(fetcher: BuiltinFetcher) -> None:
    page_fetcher: PageFetcher = fetcher
    assert page_fetcher is fetcher


async def test_charset_from_the_header_is_respected(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    page = await fetcher.fetch(base(http_server) + "/latin1")

    assert page.title == "Café"
    assert page.markdown == "Crème brûlée \u2013 naïve"


async def test_charset_from_meta_is_respected(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    page = await fetcher.fetch(base(http_server) + "/meta-charset")

    assert page.title == "Grüße"
    assert page.markdown == "Straße"


async def test_plain_text_is_used_as_it_is(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    page = await fetcher.fetch(base(http_server) + "/plain")

    assert page.markdown == "Grüße aus Köln\nzweite Zeile"
    assert page.title is None


async def test_markdown_is_used_as_it_is(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    page = await fetcher.fetch(base(http_server) + "/markdown")

    assert page.markdown == "# Notes\n\n- one\n- two"


async def test_xhtml_is_converted(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    page = await fetcher.fetch(base(http_server) + "/xhtml")

    assert page.markdown == "### Titre"
    assert page.language == "fr"


# Statuses.


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_pages_are_returned(http_server: PageServer, fetcher: BuiltinFetcher, status: int) -> None:
    page = await fetcher.fetch(base(http_server) + f"/status/{status}")

    assert page.gone
    assert page.status_code == status
    assert page.markdown == ""


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
async def test_server_errors_are_retryable(
    http_server: PageServer, fetcher: BuiltinFetcher, status: int
) -> None:
    error = await fetch_error(fetcher, base(http_server) + f"/status/{status}")

    assert error.retryable is True
    assert error.status_code == status


@pytest.mark.parametrize("status", [400, 401, 403, 451, 304])
async def test_client_errors_are_final(http_server: PageServer, fetcher: BuiltinFetcher, status: int) -> None:
    error = await fetch_error(fetcher, base(http_server) + f"/status/{status}")

    assert error.retryable is False
    assert error.status_code == status


# Redirects.


async def test_redirect_chain_is_followed(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    url = base(http_server) + "/chain/a"

    page = await fetcher.fetch(url)

    assert page.requested_url == url
    assert page.url == base(http_server) + "/page"
    assert page.title == "Autoscaling index workers"
    paths = [seen.path for seen in http_server.seen[-4:]]
    assert paths == ["/chain/a", "/chain/b", "/chain/c?x=1", "/page"]


async def test_redirects_up_to_the_limit(http_server: PageServer) -> None:
    async with BuiltinFetcher.from_settings(settings(fetch_max_redirects=2)) as fetcher:
        page = await fetcher.fetch(base(http_server) + "/redirect/2")
        assert page.url == base(http_server) + "/redirect/0"

        error = await fetch_error(fetcher, base(http_server) + "/redirect/3")

    assert error.retryable is False
    assert "too many redirects" in str(error)


async def test_no_redirects_allowed(http_server: PageServer) -> None:
    async with BuiltinFetcher.from_settings(settings(fetch_max_redirects=0)) as fetcher:
        error = await fetch_error(fetcher, base(http_server) + "/redirect/1")

    assert "too many redirects" in str(error)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://[::ffff:169.254.169.254]/", "IPv4-mapped"),
        ("http://[fd00::1]:8080/admin", "unique local"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://0.0.0.0/", "unspecified"),
    ],
)
async def test_redirect_to_a_blocked_address_is_refused_before_connecting(
    http_server: PageServer, local_traffic_only: list[httpx.URL], target: str, why: str
) -> None:
    async with BuiltinFetcher.from_settings(settings(fetch_timeout_seconds=2.0)) as fetcher:
        started = time.monotonic()
        with pytest.raises(BlockedAddressError, match=why) as caught:
            await fetcher.fetch(base(http_server) + f"/to?url={target}")
        elapsed = time.monotonic() - started

    assert caught.value.retryable is False
    assert elapsed < 1.0  # refused, not timed out
    assert len(local_traffic_only) == 1  # only the allowed first hop was sent


async def test_redirect_to_a_name_resolving_to_a_blocked_address_is_refused(
    http_server: PageServer, local_traffic_only: list[httpx.URL]
) -> None:
    resolver = fixed_resolver({"metadata.test": ["169.254.169.254"]})
    async with BuiltinFetcher.from_settings(settings(), resolver=resolver) as fetcher:
        with pytest.raises(BlockedAddressError, match=r"metadata\.test \(169\.254\.169\.254\)"):
            await fetcher.fetch(base(http_server) + "/to?url=http://metadata.test/&code=301")

    assert len(local_traffic_only) == 1


async def test_redirect_to_another_scheme_is_refused(
    http_server: PageServer, fetcher: BuiltinFetcher
) -> None:
    error = await fetch_error(fetcher, base(http_server) + "/to?url=ftp://127.0.0.1/file")

    assert error.retryable is False
    assert "only http and https" in str(error)


async def test_redirect_without_location_is_refused(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    error = await fetch_error(fetcher, base(http_server) + "/no-location")

    assert error.retryable is False
    assert "without a Location" in str(error)


# The SSRF guard on the first hop, and the allow list.


async def test_loopback_is_refused_unless_allowed(
    http_server: PageServer, local_traffic_only: list[httpx.URL]
) -> None:
    seen_before = len(http_server.seen)
    async with BuiltinFetcher.from_settings(settings(fetch_allowed_hosts=[])) as fetcher:
        for url in (base(http_server) + "/page", f"http://localhost:{http_server.port}/page"):
            with pytest.raises(BlockedAddressError, match="loopback"):
                await fetcher.fetch(url)

    assert local_traffic_only == []
    assert len(http_server.seen) == seen_before


@pytest.mark.parametrize("allowed", [["127.0.0.1"], ["127.0.0.0/8"], ["10.0.0.0/8", "127.0.0.0/8"]])
async def test_loopback_is_fetched_when_allowed(http_server: PageServer, allowed: list[str]) -> None:
    async with BuiltinFetcher.from_settings(settings(fetch_allowed_hosts=allowed)) as fetcher:
        page = await fetcher.fetch(base(http_server) + "/page")

    assert page.status_code == 200


async def test_allowed_host_name_connects_to_the_checked_address(
    http_server: PageServer, local_traffic_only: list[httpx.URL]
) -> None:
    # "internal.example" does not exist in DNS: the fetch can only work if the connection goes to the
    # address the guard checked, without resolving the name again (no DNS rebinding window).
    calls: list[str] = []
    resolver = fixed_resolver({"internal.example": ["127.0.0.1"]}, calls)
    url = base(http_server, "internal.example") + "/host"
    async with BuiltinFetcher.from_settings(
        settings(fetch_allowed_hosts=["internal.example"]), resolver=resolver
    ) as fetcher:
        page = await fetcher.fetch(url)

    assert page.url == url
    assert page.markdown == f"# internal.example:{http_server.port}"  # the original Host header
    assert calls == ["internal.example"]
    assert [url.host for url in local_traffic_only] == ["127.0.0.1"]


async def test_host_name_not_allowed_is_refused(http_server: PageServer) -> None:
    resolver = fixed_resolver({"internal.example": ["127.0.0.1"]})
    async with BuiltinFetcher.from_settings(settings(fetch_allowed_hosts=[]), resolver=resolver) as fetcher:
        with pytest.raises(BlockedAddressError, match=r"internal\.example \(127\.0\.0\.1\)"):
            await fetcher.fetch(base(http_server, "internal.example") + "/page")


async def test_any_blocked_address_refuses_the_host(http_server: PageServer) -> None:
    resolver = fixed_resolver({"mixed.example": ["127.0.0.1", "10.0.0.1"]})
    async with BuiltinFetcher.from_settings(settings(), resolver=resolver) as fetcher:
        with pytest.raises(BlockedAddressError, match=r"10\.0\.0\.1"):
            await fetcher.fetch(base(http_server, "mixed.example") + "/page")


async def test_next_address_is_tried_when_one_refuses_connections(http_server: PageServer) -> None:
    resolver = fixed_resolver({"two.example": ["127.0.0.2", "127.0.0.1"]})
    async with BuiltinFetcher.from_settings(
        settings(fetch_allowed_hosts=["127.0.0.0/8"]), resolver=resolver
    ) as fetcher:
        page = await fetcher.fetch(base(http_server, "two.example") + "/host")

    assert page.markdown == f"# two.example:{http_server.port}"


async def test_https_uses_the_host_name_for_sni_and_certificate(
    https_server: PageServer, tls_files: tuple[Path, Path], local_traffic_only: list[httpx.URL]
) -> None:
    cert, _key = tls_files
    client_context = ssl.create_default_context(cafile=str(cert))
    resolver = fixed_resolver({"pages.test": ["127.0.0.1"]})
    url = base(https_server, "pages.test", "https") + "/host"
    async with BuiltinFetcher.from_settings(
        settings(), resolver=resolver, ssl_context=client_context
    ) as fetcher:
        page = await fetcher.fetch(url)

        # The certificate names pages.test only: by IP address the same server is not trusted.
        error = await fetch_error(fetcher, base(https_server, scheme="https") + "/host")

    assert page.url == url
    assert page.markdown == f"# pages.test:{https_server.port}"
    assert https_server.sni_names[0] == "pages.test"
    assert "certificate" in str(error).lower()
    assert all(url.host == "127.0.0.1" for url in local_traffic_only)


# Limits.


@pytest.mark.parametrize("path", ["/big", "/big-stream", "/gzip-bomb"])
async def test_body_over_the_limit_is_abandoned(http_server: PageServer, path: str) -> None:
    async with BuiltinFetcher.from_settings(settings(fetch_max_bytes=4096)) as fetcher:
        error = await fetch_error(fetcher, base(http_server) + path)

    assert error.retryable is False
    assert "too large" in str(error)


@pytest.mark.parametrize(
    ("path", "shown"),
    [("/image", "image/png"), ("/json", "application/json"), ("/no-type", "no content type")],
)
async def test_other_content_types_are_refused(
    http_server: PageServer, fetcher: BuiltinFetcher, path: str, shown: str
) -> None:
    error = await fetch_error(fetcher, base(http_server) + path)

    assert error.retryable is False
    assert shown in str(error)


async def test_page_nested_too_deeply_is_refused(http_server: PageServer, fetcher: BuiltinFetcher) -> None:
    error = await fetch_error(fetcher, base(http_server) + "/deep")

    assert error.retryable is False
    assert "nested too deeply" in str(error)


async def test_slow_page_times_out(http_server: PageServer) -> None:
    async with BuiltinFetcher.from_settings(settings(fetch_timeout_seconds=0.5)) as fetcher:
        started = time.monotonic()
        error = await fetch_error(fetcher, base(http_server) + "/slow")

    assert error.retryable is True
    assert time.monotonic() - started < 2.0


async def test_connection_refused_is_retryable(fetcher: BuiltinFetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now.

    error = await fetch_error(fetcher, f"http://127.0.0.1:{port}/")

    assert error.retryable is True
    assert "cannot connect" in str(error)


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/file", "file:///etc/passwd", "http:///no-host", "not a url"]
)
async def test_bad_urls_are_refused(
    fetcher: BuiltinFetcher, url: str, local_traffic_only: list[httpx.URL]
) -> None:
    error = await fetch_error(fetcher, url)

    assert error.retryable is False
    assert local_traffic_only == []
