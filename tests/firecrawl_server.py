"""A real HTTP server on 127.0.0.1 answering like Firecrawl's crawl results API (``GET /v2/crawl/{id}``,
``GET /v2/batch/scrape/{id}``), for tests that run crawldex's client against the documented contract.

It pages results as Firecrawl does: ``skip`` is where a page starts; ``next`` is present while ``total`` is
larger than what was handed out, and it is built from the request's ``Host`` with ``https`` (Firecrawl's
default outside ``ENV=local``), so a client that fetched it as given would fail here. While a crawl is
``scraping`` with fewer results than its total, ``next`` keeps naming the same ``skip``. An unknown id
answers 404 ``{"success": false, "error": "Job not found"}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.local_http import QuietHandler, serve

EXPIRES_AT = "2026-11-25T09:14:03.118Z"
PATHS = {"crawl": "/v2/crawl/", "batch_scrape": "/v2/batch/scrape/"}


@dataclass
class FirecrawlCrawl:
    documents: list[dict[str, Any]]
    status: str = "completed"
    total: int | None = None  # default: len(documents)


@dataclass
class FirecrawlServer:
    base_url: str = ""
    api_key: str | None = None
    page_size: int = 3
    crawls: dict[tuple[str, str], FirecrawlCrawl] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)  # path?query of every request

    def add(
        self, crawl_id: str, documents: list[dict[str, Any]], *, kind: str = "crawl", **state: Any
    ) -> None:
        self.crawls[(kind, crawl_id)] = FirecrawlCrawl(documents=documents, **state)

    def answer(
        self, path: str, query: str, host: str, authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return 401, {"success": False, "error": "Unauthorized: Invalid token"}
        for kind, prefix in PATHS.items():
            if path.startswith(prefix) and (kind, path[len(prefix) :]) in self.crawls:
                crawl = self.crawls[(kind, path[len(prefix) :])]
                break
        else:
            return 404, {"success": False, "error": "Job not found"}
        skip_values = parse_qs(query).get("skip", ["0"])
        if len(skip_values) != 1 or not skip_values[0].isdigit():
            return 400, {"success": False, "error": "Invalid pagination: skip must be a non-negative integer"}
        skip = int(skip_values[0])
        data = crawl.documents[skip : skip + self.page_size]
        total = crawl.total if crawl.total is not None else len(crawl.documents)
        body: dict[str, Any] = {
            "success": True,
            "status": crawl.status,
            "completed": len(crawl.documents),
            "total": total,
            "creditsUsed": len(crawl.documents),
            "expiresAt": EXPIRES_AT,
        }
        if total > skip + len(data):
            body["next"] = f"https://{host}{path}?skip={skip + len(data)}"
        body["data"] = data
        return 200, body


@contextmanager
def serve_firecrawl(api_key: str | None = None) -> Iterator[FirecrawlServer]:
    firecrawl = FirecrawlServer(api_key=api_key)

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            firecrawl.requests.append(self.path)
            status, body = firecrawl.answer(
                parts.path, parts.query, self.headers.get("Host", ""), self.headers.get("Authorization")
            )
            self.send_json(status, body)

    with serve(Handler) as base_url:
        firecrawl.base_url = base_url
        yield firecrawl
