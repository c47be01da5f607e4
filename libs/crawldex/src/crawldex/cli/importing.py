"""`crawldex import`: queue index jobs for many pages at once (JSON Lines, markdown files, a sitemap)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawldex.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    HelpFormatter,
    UsageError,
    one_line,
    operator_context,
    positive_float,
    positive_int,
    progress,
    validation_message,
    wait_for_indexing,
)
from crawldex.cli.sources import IMPORT_SOURCE, SourceItem
from crawldex.config import Settings

if TYPE_CHECKING:
    from crawldex.adapters.queue import JobQueue
    from crawldex.models import PageDocument

SHOWN_PROBLEMS = 50  # per list; the rest are counted
FORMATS = ("auto", "jsonl", "markdown", "sitemap")

DESCRIPTION = """\
Queue an index job for every page of PATH_OR_URL; the index-workers do the indexing. Three sources:

  a JSON Lines file   one object per line: "url" and "markdown" (required), "title", "description",
                      "language", "crawl_id" (optional); other keys are ignored.
  a directory         every .md/.markdown file under it (hidden ones skipped). A file's URL is the url:
                      of its front matter (--- ... --- at the top); files without one need --base-url,
                      and get BASE_URL + their path without .md (guide/setup.md -> BASE_URL/guide/setup,
                      guide/index.md -> BASE_URL/guide/). Title: front matter title:, else the first
                      "# heading"; description: and language: (or lang:) from the front matter.
  a sitemap           a sitemap.xml (or .xml.gz) file or URL, or a sitemap index and the sitemaps it
                      lists; each listed page is fetched now, as rescrapes fetch pages (Firecrawl with
                      CRAWLDEX_FIRECRAWL_URL, else the built-in fetcher with its SSRF guard: local and
                      private addresses need CRAWLDEX_FETCH_ALLOWED_HOSTS).

Bad records (not JSON, no url, blank markdown, a URL that is not http(s)) are reported with their line
number or file and skipped; they never stop the import. The job ids are idempotent: importing the same
source again adds no jobs while the earlier ones wait, run or are finished (--delivery-id changes that).
Exit code 1 when any record was skipped or failed (or, with --wait, any job failed).
"""
EPILOG = """\
examples:
  crawldex import pages.jsonl
  crawldex import ./docs --base-url https://docs.example.com/ --wait
  crawldex import https://example.com/sitemap.xml --concurrency 8 --crawl-id import-2026-01
"""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "import",
        parents=[common],
        help="bulk index pages from JSON Lines, markdown files or a sitemap",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "source", metavar="PATH_OR_URL", help="a .jsonl file, a directory, a sitemap file or URL"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="what the source is (default: auto: a URL is a sitemap, a directory holds markdown, a file "
        "is told by its name (.jsonl/.ndjson, .xml/.xml.gz) or its first byte)",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="markdown directories: the URL of the directory itself; required for files without url: in "
        "their front matter",
    )
    parser.add_argument(
        "--crawl-id", metavar="ID", help="crawl id for every page that has none (search can filter on it)"
    )
    parser.add_argument(
        "--delivery-id",
        metavar="ID",
        help="names this import in the job ids (default: a digest of the source, so the same source "
        "imported again is recognised); a new value queues every page again",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="sitemaps: pages fetched at the same time (default: 4)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for the index jobs and report how many were indexed, unchanged and failed",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="--wait gives up after this long (default: 3600); exit code 1 then",
    )
    parser.set_defaults(handler=run_import)


@dataclass
class ImportReport:
    read: int = 0
    queued: int = 0
    deduplicated: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why): invalid records
    failed: list[tuple[str, str]] = field(default_factory=list)  # (where, why): fetches, queueing
    job_ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.skipped and not self.failed

    def print(self) -> None:
        print(
            f"read {self.read}: queued {self.queued}, deduplicated {self.deduplicated}, "
            f"skipped {len(self.skipped)}, failed {len(self.failed)}"
        )
        _print_problems("skipped (invalid)", self.skipped)
        _print_problems("failed", self.failed)


def _print_problems(title: str, problems: list[tuple[str, str]]) -> None:
    if not problems:
        return
    print(f"{title}:")
    for where, why in problems[:SHOWN_PROBLEMS]:
        print(f"  {where}: {one_line(why)}")
    if len(problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")


def _detect(source: str, declared: str) -> str:
    """jsonl, markdown, sitemap-url or sitemap-file; a source that is not there is a usage error."""
    is_url = source.startswith(("http://", "https://"))
    if is_url:
        if declared not in ("auto", "sitemap"):
            raise UsageError(f"{source} is a URL: only a sitemap can be imported from a URL")
        return "sitemap-url"
    path = Path(source)
    if not path.exists():
        raise UsageError(f"{source}: no such file or directory")
    if path.is_dir():
        if declared not in ("auto", "markdown"):
            raise UsageError(f"{source} is a directory: only markdown files are imported from a directory")
        return "markdown"
    if declared == "markdown":
        raise UsageError(f"{source} is a file: --format markdown takes a directory")
    if declared == "jsonl":
        return "jsonl"
    if declared == "sitemap":
        return "sitemap-file"
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith((".xml", ".xml.gz")):
        return "sitemap-file"
    try:
        with path.open("rb") as stream:
            head = stream.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    except OSError as exc:
        raise UsageError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    if head.startswith(b"{"):
        return "jsonl"
    if head.startswith(b"<") or head.startswith(b"\x1f\x8b"):
        return "sitemap-file"
    raise UsageError(f"cannot tell what {source} holds: say --format jsonl or --format sitemap")


async def run_import(args: argparse.Namespace, settings: Settings) -> int:
    from crawldex.errors import DependencyUnavailableError
    from crawldex.urls import canonicalize_url

    kind = _detect(args.source, args.format)
    if args.base_url is not None:
        try:
            canonicalize_url(args.base_url)
        except ValueError as exc:
            raise UsageError(f"--base-url {args.base_url!r}: {exc}") from exc
    report = ImportReport()
    async with operator_context(settings) as operator:
        try:
            if kind == "jsonl":
                await _import_jsonl(Path(args.source), args, operator.queue, report)
            elif kind == "markdown":
                await _import_markdown(Path(args.source), args, operator.queue, report)
            else:
                await _import_sitemap(
                    args.source, kind == "sitemap-url", args, settings, operator.queue, report
                )
        except DependencyUnavailableError as exc:
            report.print()
            raise CliError(
                f"{exc.dependency} is unavailable, the import stopped after queueing {report.queued} pages: "
                f"{one_line(str(exc).removeprefix(exc.dependency + ': '))}"
            ) from exc
        report.print()
        if not args.wait or not report.job_ids:
            return EXIT_OK if report.complete else EXIT_FAILED
        waited = await wait_for_indexing(
            operator, report.job_ids, give_up_after=args.timeout, quiet=args.quiet, description="indexing"
        )
    print(waited.summary())
    _print_problems("failed jobs", sorted(waited.errors.items()))
    if waited.pending:
        print(f"gave up waiting after {args.timeout:g}s", file=sys.stderr)
    return EXIT_OK if report.complete and waited.ok else EXIT_FAILED


def _delivery(args: argparse.Namespace, digest: str) -> str:
    return args.delivery_id or f"import-{digest[:32]}"


async def _enqueue_items(
    items: Iterable[SourceItem],
    delivery_id: str,
    queue: JobQueue,
    report: ImportReport,
    *,
    total: int,
    quiet: bool,
) -> None:
    with progress(total=total, unit="page", quiet=quiet, description="queueing") as bar:
        for item in items:
            report.read += 1
            if item.page is None:
                report.skipped.append((item.where, item.problem or "invalid"))
            else:
                await _enqueue(item.where, item.page, delivery_id, queue, report)
            bar.update(1)


async def _enqueue(
    where: str, page: PageDocument, delivery_id: str, queue: JobQueue, report: ImportReport
) -> None:
    meta = {"source": IMPORT_SOURCE, "delivery_id": delivery_id, "crawl_id": page.crawl_id}
    enqueued = await asyncio.to_thread(lambda: queue.enqueue_index(page, delivery_id=delivery_id, meta=meta))
    report.job_ids.append(enqueued.job_id)
    if enqueued.deduplicated:
        report.deduplicated += 1
    else:
        report.queued += 1


async def _import_jsonl(path: Path, args: argparse.Namespace, queue: JobQueue, report: ImportReport) -> None:
    from crawldex.cli.sources import read_jsonl, scan_file

    try:
        digest, lines = await asyncio.to_thread(scan_file, path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    items = _guard_io(read_jsonl(path, crawl_id=args.crawl_id), path)
    await _enqueue_items(items, _delivery(args, digest), queue, report, total=lines, quiet=args.quiet)


async def _import_markdown(
    root: Path, args: argparse.Namespace, queue: JobQueue, report: ImportReport
) -> None:
    from crawldex.cli.sources import markdown_files, read_markdown_files, scan_markdown_files

    try:
        files = await asyncio.to_thread(markdown_files, root)
        digest = await asyncio.to_thread(scan_markdown_files, root, files)
    except OSError as exc:
        raise CliError(f"{root}: cannot read: {exc}") from exc
    if not files:
        raise CliError(f"{root} holds no .md or .markdown files")
    items = read_markdown_files(root, files, base_url=args.base_url, crawl_id=args.crawl_id)
    await _enqueue_items(items, _delivery(args, digest), queue, report, total=len(files), quiet=args.quiet)


def _guard_io(items: Iterator[SourceItem], path: Path) -> Iterator[SourceItem]:
    """A file that cannot be read further (removed, a disk error) ends the import with a clear line."""
    try:
        yield from items
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from exc


async def _import_sitemap(
    source: str,
    is_url: bool,
    args: argparse.Namespace,
    settings: Settings,
    queue: JobQueue,
    report: ImportReport,
) -> None:
    from crawldex.adapters.fetching import FetchError
    from crawldex.adapters.web_fetcher import BuiltinFetcher
    from crawldex.cli.sitemap import SITEMAP_MEDIA_TYPES, SitemapError, list_pages
    from crawldex.services import make_fetcher

    async with BuiltinFetcher.from_settings(settings) as downloader:

        async def download(url: str) -> bytes:
            _, body = await downloader.download(url, media_types=SITEMAP_MEDIA_TYPES)
            return body

        try:
            first = await download(source) if is_url else await asyncio.to_thread(Path(source).read_bytes)
        except FetchError as exc:
            raise CliError(f"cannot download the sitemap: {exc}") from exc
        except OSError as exc:
            raise UsageError(f"{source}: cannot read: {exc.strerror or exc}") from exc
        try:
            listing = await list_pages(source, first, download)
        except SitemapError as exc:
            raise CliError(f"{source} is not a sitemap crawldex can read: {exc}") from exc
    report.skipped.extend(listing.problems)
    report.read += len(listing.problems) + listing.duplicates
    report.deduplicated += listing.duplicates
    if not args.quiet:
        print(
            f"{listing.sitemaps_read} sitemap(s): {len(listing.pages)} pages to fetch",
            file=sys.stderr,
        )
    delivery_id = _delivery(args, listing.digest)
    fetcher = make_fetcher(settings)
    pages = iter(listing.pages)
    try:
        with progress(total=len(listing.pages), unit="page", quiet=args.quiet, description="fetching") as bar:

            async def fetch_and_queue() -> None:
                for url in pages:  # one shared iterator: each URL goes to one of the fetchers
                    report.read += 1
                    await _fetch_and_queue(url, fetcher, args.crawl_id, delivery_id, queue, report)
                    bar.update(1)

            async with asyncio.TaskGroup() as group:
                for _ in range(min(args.concurrency, max(1, len(listing.pages)))):
                    group.create_task(fetch_and_queue())
    except ExceptionGroup as group_error:
        raise group_error.exceptions[0] from None  # the first failure (Redis down) ends the import
    finally:
        await fetcher.aclose()


async def _fetch_and_queue(
    url: str, fetcher: Any, crawl_id: str | None, delivery_id: str, queue: JobQueue, report: ImportReport
) -> None:
    from pydantic import ValidationError

    from crawldex.adapters.fetching import FetchError
    from crawldex.models import PageDocument, utc_now

    # As a rescrape does: the content is as new as the moment its fetch starts.
    fetch_started = utc_now()
    try:
        fetched = await fetcher.fetch(url)
    except FetchError as exc:
        report.failed.append((url, str(exc)))
        return
    if fetched.gone:
        report.failed.append((url, f"answered HTTP {fetched.status_code}: the page is gone"))
        return
    if not fetched.markdown.strip():
        report.skipped.append((url, "the page has no text"))
        return
    try:
        page = PageDocument(
            url=fetched.url,
            markdown=fetched.markdown,
            title=_clip(fetched.title, 4096),
            description=_clip(fetched.description, 16384),
            language=_clip(fetched.language, 64),
            crawl_id=crawl_id,
            source=IMPORT_SOURCE,
            received_at=fetch_started,
        )
    except ValidationError as exc:
        report.skipped.append((url, validation_message(exc)))
        return
    await _enqueue(url, page, delivery_id, queue, report)


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else value
