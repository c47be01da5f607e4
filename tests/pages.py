"""A real HTTP server of test pages on 127.0.0.1, whose content and status the test changes at will."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.local_http import QuietHandler, serve


@dataclass
class PageSite:
    base_url: str
    pages: dict[str, tuple[int, str | bytes]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    content_types: dict[str, str] = field(default_factory=dict)  # by path; text/html otherwise

    def set(self, path: str, body: str | bytes, status: int = 200, content_type: str | None = None) -> str:
        self.pages[path] = (status, body)
        if content_type is not None:
            self.content_types[path] = content_type
        return self.base_url + path

    @staticmethod
    def html(title: str, body: str) -> str:
        return f"<html lang='en'><head><title>{title}</title></head><body><main>{body}</main></body></html>"


@contextmanager
def serve_pages() -> Iterator[PageSite]:
    site = PageSite(base_url="")

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            site.hits[self.path] = site.hits.get(self.path, 0) + 1
            status, body = site.pages.get(self.path, (404, "<html><body>Not Found</body></html>"))
            data = body if isinstance(body, bytes) else body.encode("utf-8")
            content_type = site.content_types.get(self.path, "text/html")
            self.send_body(status, data, f"{content_type}; charset=utf-8")

    with serve(Handler) as base_url:
        site.base_url = base_url
        yield site
