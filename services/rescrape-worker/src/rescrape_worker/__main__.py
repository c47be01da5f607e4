"""`crawldex-rescrape-worker`: an RQ worker on the `rescrape` queue.

It fetches changed pages (Firecrawl's scrape API, or the built-in fetcher) and hands them to the
`indexing` queue; it needs no model and no vector store. SIGTERM lets the running job finish.
"""

from __future__ import annotations

from crawldex.worker import main as worker_main


def main(argv: list[str] | None = None) -> None:
    worker_main("rescrape-worker", argv)


if __name__ == "__main__":
    main()
