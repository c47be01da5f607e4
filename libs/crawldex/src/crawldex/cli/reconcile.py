"""`crawldex reconcile`: read a crawl's results back from Firecrawl and index the pages no webhook brought.

Self-hosted Firecrawl sends each webhook once. A reconciliation lists the crawl's results
(`GET /v2/crawl/{id}` or `/v2/batch/scrape/{id}`, paginated) and queues an index job for every page that never
arrived; pages already received are not queued twice, so running it again is safe (`crawldex.crawls`).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from crawldex.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    HelpFormatter,
    UsageError,
    one_line,
    operator_context,
    positive_float,
    print_json,
    wait_for_indexing,
)
from crawldex.config import Settings

KINDS = ("crawl", "batch_scrape")


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        parents=[common],
        help="index the pages of a Firecrawl crawl whose webhooks never arrived",
        description=(
            "Read a crawl's results back from Firecrawl's API (CRAWLDEX_FIRECRAWL_URL) and queue an index "
            "job for every page whose crawl.page webhook never arrived; pages Firecrawl reports failed are "
            "recorded as failed. crawl.completed and batch_scrape.completed run this on their own; run it by "
            "hand for a crawl whose completed webhook was lost too, or after an outage. Safe to repeat: "
            "pages already received or recovered are not queued again. By default it runs here and now; "
            "--queue leaves it to a rescrape-worker (job reconcile-<kind>-<crawl id>)."
        ),
        epilog=(
            "examples:\n  crawldex reconcile 3f2b6d1e-8c4a-4b7e-9d2f-1a5c7e9b0d34 --wait\n"
            "  crawldex reconcile 9a7c5e3b-1d2f-4a6b-8c0e-2f4a6c8e0b13 --kind batch_scrape --queue"
        ),
        formatter_class=HelpFormatter,
    )
    reconcile.add_argument(
        "crawl_id", metavar="CRAWL_ID", help="the crawl's (or batch scrape's) id at Firecrawl"
    )
    reconcile.add_argument(
        "--kind", choices=KINDS, default="crawl", help="a crawl (default) or a batch scrape"
    )
    how = reconcile.add_mutually_exclusive_group()
    how.add_argument(
        "--queue", action="store_true", help="queue it for a rescrape-worker instead of running it here"
    )
    how.add_argument(
        "--wait", action="store_true", help="then wait until the index jobs of the recovered pages end"
    )
    reconcile.add_argument(
        "--timeout",
        type=positive_float,
        default=1800.0,
        metavar="SECONDS",
        help="--wait gives up after this long (1800)",
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    reconcile.set_defaults(handler=run_reconcile)


async def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from crawldex.adapters.firecrawl import CrawlResultsError
    from crawldex.crawls import request_reconciliation, run_reconciliation

    if args.queue:
        async with operator_context(settings) as operator:
            try:
                job = await asyncio.to_thread(
                    request_reconciliation, operator.queue, settings, args.crawl_id, args.kind
                )
            except ValueError as exc:
                raise UsageError(f"CRAWL_ID {args.crawl_id!r}: {exc}") from exc
        state = "already queued" if job.deduplicated else "queued"
        print(f"reconciliation of {args.kind} {args.crawl_id} {state}: job {job.job_id}")
        return EXIT_OK
    try:
        report = await run_reconciliation(settings, args.crawl_id, args.kind)
    except ValueError as exc:
        raise UsageError(f"CRAWL_ID {args.crawl_id!r}: {exc}") from exc
    except CrawlResultsError as exc:  # recorded as a failed run (GET /api/crawls/{id} shows it)
        raise CliError(f"reconciliation of {args.kind} {args.crawl_id} failed: {one_line(exc)}") from exc
    if args.json:
        print_json(report.as_job_result())
    else:
        print(
            f"{args.kind} {report.crawl_id}: {report.outcome} (Firecrawl says {report.firecrawl_status or '?'}, "
            f"{report.firecrawl_total if report.firecrawl_total is not None else '?'} pages); listed "
            f"{report.pages_listed}: {report.pages_known} had arrived, {report.pages_recovered} recovered and "
            f"queued, {report.pages_failed} failed at Firecrawl"
        )
    if report.outcome == "incomplete":
        print(
            "the crawl had not ended at Firecrawl, or its listing stopped early: run this again once it ends"
        )
    if report.outcome not in ("succeeded", "incomplete"):
        return EXIT_FAILED
    if not args.wait or not report.job_ids:
        return EXIT_OK
    async with operator_context(settings) as operator:
        waited = await wait_for_indexing(
            operator, report.job_ids, give_up_after=args.timeout, quiet=args.quiet, description="indexing"
        )
    print(waited.summary())
    return EXIT_OK if waited.ok else EXIT_FAILED
