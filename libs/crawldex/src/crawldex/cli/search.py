"""`crawldex search`: the search the API offers (`POST /api/search`), run in this process."""

from __future__ import annotations

import argparse
from typing import Any

from crawldex.cli.common import EXIT_OK, HelpFormatter, UsageError, one_line, print_json, validation_message
from crawldex.config import Settings

SNIPPET_CHARS = 240


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "search",
        parents=[common],
        help="search the index (hybrid, semantic or keyword)",
        description=(
            "Search the index as POST /api/search does, in this process: the query is embedded by the "
            "configured embedder (the in-process model, or TEI at CRAWLDEX_TEI_URL) and ranked in the vector "
            "store (CRAWLDEX_QDRANT_URL, or the embedded store in CRAWLDEX_DATA_DIR, which only one process "
            "can open at a time). Prints rank, score, URL, title and a snippet per result."
        ),
        epilog='example:\n  crawldex search "how are workers scaled" --mode keyword --limit 5',
        formatter_class=HelpFormatter,
    )
    parser.add_argument("query", help="what to look for")
    parser.add_argument(
        "--mode",
        choices=("hybrid", "semantic", "keyword", "bm25"),
        default="hybrid",
        help="hybrid (dense and keyword, fused; default), semantic (dense only), keyword (BM25; alias bm25)",
    )
    parser.add_argument(
        "--limit", type=int, default=10, metavar="N", help="results to show, 1-100 (default 10)"
    )
    parser.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N results")
    parser.add_argument(
        "--group-by",
        choices=("page", "chunk"),
        help="page: one result per page, its best chunk; chunk: every chunk on its own "
        "(default: CRAWLDEX_SEARCH_GROUP_BY, page)",
    )
    parser.add_argument("--domain", help="only pages of this host (with or without www.)")
    parser.add_argument(
        "--url-prefix", metavar="URL", help="only pages under this URL (path-segment boundaries)"
    )
    parser.add_argument("--language", help="only pages in this language (en matches en, en-US)")
    parser.add_argument("--crawl-id", metavar="ID", help="only pages of this crawl")
    parser.add_argument("--json", action="store_true", help="print the API's JSON response")
    parser.set_defaults(handler=run_search)


async def run_search(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from crawldex.search import SearchRequest
    from crawldex.services import SearchServices

    filters = {
        "domain": args.domain,
        "url_prefix": args.url_prefix,
        "language": args.language,
        "crawl_id": args.crawl_id,
    }
    filters = {name: value for name, value in filters.items() if value is not None}
    try:
        request = SearchRequest.model_validate(
            {
                "query": args.query,
                "mode": args.mode,
                "limit": args.limit,
                "offset": args.offset,
                "group_by": args.group_by,
                "filters": filters or None,
            }
        )
    except ValidationError as exc:
        raise UsageError(validation_message(exc)) from exc
    services = await SearchServices.start(settings)
    try:
        response = await services.search.search(request)
    finally:
        await services.aclose()
    if args.json:
        print_json(response.model_dump(mode="json"))
        return EXIT_OK
    if not response.results:
        print(f"no results ({response.mode} search, {response.took_ms:.0f} ms)")
        return EXIT_OK
    for rank, result in enumerate(response.results, start=request.offset + 1):
        title = f"  {result.title}" if result.title else ""
        print(f"{rank:>3}. {result.score:.4f}  {result.url}{title}")
        snippet = one_line(result.text)
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[: SNIPPET_CHARS - 1].rstrip() + "…"
        print(f"     {snippet}")
    print(
        f"{len(response.results)} of {response.total} results ({response.mode} search, {response.took_ms:.0f} ms)"
    )
    return EXIT_OK
