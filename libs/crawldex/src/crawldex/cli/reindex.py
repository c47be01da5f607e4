"""`crawldex reindex` (fetch pages again and index what changed) and `crawldex purge` (remove a page).

Both go through change events, as changedetection.io notifications do (`crawldex.changes.open_change`,
source ``operator``): the event records what was asked and what became of it (`GET /api/change-events`),
and the workers do the work. A reindex is a rescrape job: the rescrape-worker fetches the page now and
queues its index job (or its removal, if it answers 404/410); the index-worker re-embeds only pages whose
content changed. A purge is a removal job on the index-worker.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crawldex.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    HelpFormatter,
    Operator,
    UsageError,
    one_line,
    operator_context,
    positive_float,
    positive_int,
    progress,
    wait_for_indexing,
)
from crawldex.config import Settings

REINDEXED_STATUSES = ("indexed", "empty")  # documents.status values a reindex --all re-fetches (not gone)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    reindex = commands.add_parser(
        "reindex",
        parents=[common],
        help="fetch pages again and re-index them (through change events)",
        description=(
            "Re-fetch a page (--url) or every indexed page (--all) and index what changed. Each page gets a "
            "change event with source 'operator' and a rescrape job, exactly as a changedetection.io "
            "notification would: the rescrape-worker fetches it (Firecrawl or the built-in fetcher), the "
            "index-worker re-embeds it if its content changed, and a page that now answers 404/410 leaves "
            "the index. A page whose earlier change is still waiting for its fetch joins that event instead "
            "of adding one. Follow the events with GET /api/change-events?url=... ."
        ),
        epilog="examples:\n  crawldex reindex --url https://example.com/pricing\n  crawldex reindex --all",
        formatter_class=HelpFormatter,
    )
    which = reindex.add_mutually_exclusive_group(required=True)
    which.add_argument("--url", help="the page to fetch again (it need not be indexed yet)")
    which.add_argument(
        "--all",
        action="store_true",
        help="every page of the documents table that is indexed (status indexed or empty; not gone)",
    )
    reindex.add_argument(
        "--batch-size",
        type=positive_int,
        default=500,
        metavar="N",
        help="--all: documents read per query (default 500)",
    )
    reindex.set_defaults(handler=run_reindex)

    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="remove a page from the index",
        description=(
            "Remove a page's chunks from the index: a change event with source 'operator' and a removal job "
            "for the index-worker; the page's document row is kept with status gone. A later delivery of the "
            "page (a webhook, an import, a reindex) indexes it again."
        ),
        epilog="example:\n  crawldex purge --url https://example.com/old-page --wait",
        formatter_class=HelpFormatter,
    )
    purge.add_argument("--url", required=True, help="the page to remove")
    purge.add_argument("--wait", action="store_true", help="wait until the index-worker has removed it")
    purge.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        metavar="SECONDS",
        help="--wait gives up after this long (600)",
    )
    purge.set_defaults(handler=run_purge)


def _canonical(url: str) -> str:
    from crawldex.urls import canonicalize_url

    try:
        return canonicalize_url(url)
    except ValueError as exc:
        raise UsageError(f"--url {url!r}: {exc}") from exc


async def run_reindex(args: argparse.Namespace, settings: Settings) -> int:
    async with operator_context(settings) as operator:
        if args.url is not None:
            return await _reindex_one(operator, args.url)
        return await _reindex_all(operator, args)


async def _reindex_one(operator: Operator, url: str) -> int:
    from crawldex.changes import SOURCE_OPERATOR, open_change
    from crawldex.urls import document_id

    canonical = _canonical(url)
    known = await operator.documents.get(document_id(canonical))
    opened = await open_change(
        operator.change_events,
        operator.queue,
        source=SOURCE_OPERATOR,
        url=url,
        canonical_url=canonical,
        watch_uuid=None,
        detected_at=None,
        removed=False,
    )
    if opened.joined:
        print(
            f"joined change event {opened.event.id}: a change of {canonical} already waits for its fetch "
            f"(rescrape job {opened.job_id})"
        )
    else:
        print(f"change event {opened.event.id} opened; rescrape job {opened.job_id} queued")
    if known is None:
        print(
            f"note: {canonical} is not indexed yet; it is fetched and indexed as a new page", file=sys.stderr
        )
    return EXIT_OK


async def _reindex_all(operator: Operator, args: argparse.Namespace) -> int:
    from crawldex.changes import SOURCE_OPERATOR, open_change
    from crawldex.errors import DependencyUnavailableError

    total = await operator.documents.count(statuses=REINDEXED_STATUSES)
    opened = joined = 0
    after: str | None = None
    try:
        with progress(total=total, unit="page", quiet=args.quiet, description="reindex") as bar:
            while True:
                documents = await operator.documents.list_after(
                    after, limit=args.batch_size, statuses=REINDEXED_STATUSES
                )
                if not documents:
                    break
                for document in documents:
                    change = await open_change(
                        operator.change_events,
                        operator.queue,
                        source=SOURCE_OPERATOR,
                        url=document.url,
                        canonical_url=document.canonical_url,
                        watch_uuid=None,
                        detected_at=None,
                        removed=False,
                    )
                    joined += change.joined
                    opened += not change.joined
                    bar.update(1)
                after = documents[-1].canonical_url
    except DependencyUnavailableError as exc:
        raise CliError(
            f"{exc.dependency} is unavailable; stopped after {opened + joined} of {total} pages "
            f"(running it again joins the changes still waiting): "
            f"{one_line(str(exc).removeprefix(exc.dependency + ': '))}"
        ) from exc
    print(f"reindex: {opened + joined} pages: {opened} change events opened, {joined} joined a waiting one")
    return EXIT_OK


async def run_purge(args: argparse.Namespace, settings: Settings) -> int:
    from crawldex.changes import SOURCE_OPERATOR, open_change
    from crawldex.db.tables import DocumentStatus
    from crawldex.urls import document_id

    canonical = _canonical(args.url)
    async with operator_context(settings) as operator:
        document = await operator.documents.get(document_id(canonical))
        if document is None:
            raise CliError(f"{canonical} is not in the index (no document has that canonical URL)")
        if document.status == DocumentStatus.GONE:
            print(f"{canonical} is already removed from the index")
            return EXIT_OK
        opened = await open_change(
            operator.change_events,
            operator.queue,
            source=SOURCE_OPERATOR,
            url=document.url,
            canonical_url=canonical,
            watch_uuid=None,
            detected_at=None,
            removed=True,
        )
        print(f"removal job {opened.job_id} queued (change event {opened.event.id}) for {canonical}")
        if not args.wait or opened.job_id is None:
            return EXIT_OK
        waited = await wait_for_indexing(
            operator, [opened.job_id], give_up_after=args.timeout, quiet=args.quiet, description="removing"
        )
    if waited.outcomes["gone"]:
        print(f"removed {canonical} from the index")
        return EXIT_OK
    if waited.pending:
        print(f"the removal job is still pending after {args.timeout:g}s", file=sys.stderr)
    for job_id, error in waited.errors.items():
        print(f"{job_id} failed: {error}", file=sys.stderr)
    return EXIT_FAILED
