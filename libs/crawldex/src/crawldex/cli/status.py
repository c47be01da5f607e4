"""`crawldex status` (queues and workers) and `crawldex requeue` (failed jobs back onto their queue)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crawldex.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    HelpFormatter,
    Operator,
    UsageError,
    operator_context,
    positive_int,
    print_json,
)
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings

if TYPE_CHECKING:
    from crawldex.adapters.queue_admin import FailedJob, QueueCounts, WorkerView

QUEUES = (QUEUE_INDEXING, QUEUE_RESCRAPE)
COUNT_COLUMNS = ("queued", "started", "abandoned", "scheduled", "failed", "finished")


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status",
        parents=[common],
        help="queue counts and workers",
        formatter_class=HelpFormatter,
        description=(
            "Per queue (indexing, rescrape): jobs queued (waiting for a worker), started (running), "
            "abandoned (started, but their worker stopped renewing its lease; a worker's maintenance "
            "re-runs them), scheduled (waiting out a retry interval), failed (out of tries; see "
            "`crawldex requeue`) and finished (kept for CRAWLDEX_JOB_RESULT_TTL_SECONDS). Then every live "
            "worker: name, queues, state, current job and last heartbeat. Reads Redis only."
        ),
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    status.add_argument(
        "--failed",
        type=positive_int,
        nargs="?",
        const=20,
        default=0,
        metavar="N",
        help="also list up to N failed jobs per queue (default N: 20) with their last error",
    )
    status.set_defaults(handler=run_status)

    requeue = commands.add_parser(
        "requeue",
        parents=[common],
        help="put failed jobs back onto their queue",
        description=(
            "Move failed jobs from RQ's failed registry back onto their queue, with their full retry "
            "policy again (CRAWLDEX_INDEX_JOB_RETRIES or CRAWLDEX_RESCRAPE_JOB_RETRIES tries, the job's own "
            "retry waits). A job that belongs to a change event re-opens that event first (queued for a "
            "rescrape, indexing for an index or removal job), so the job's work is recorded there again. "
            "Name the jobs with --job-id, or take every failed job of --queue, or of both queues with --all."
        ),
        epilog="examples:\n  crawldex requeue --job-id rescrape-42\n  crawldex requeue --queue indexing\n"
        "  crawldex requeue --all --dry-run",
        formatter_class=HelpFormatter,
    )
    requeue.add_argument(
        "--job-id", action="append", default=[], metavar="ID", help="a failed job's id (repeatable)"
    )
    requeue.add_argument(
        "--queue",
        choices=(*QUEUES, "all"),
        default=None,
        help="only failed jobs of this queue; without --job-id: every failed job of it",
    )
    requeue.add_argument("--all", action="store_true", help="every failed job of both queues")
    requeue.add_argument("--dry-run", action="store_true", help="list what would be requeued; change nothing")
    requeue.set_defaults(handler=run_requeue)


# ---- status ----


async def run_status(args: argparse.Namespace, settings: Settings) -> int:
    async with operator_context(settings) as operator:
        admin = operator.admin
        counts = [await asyncio.to_thread(admin.counts, queue) for queue in QUEUES]
        workers = await asyncio.to_thread(admin.workers)
        failed: list[FailedJob] = []
        if args.failed:
            for queue in QUEUES:
                ids = (await asyncio.to_thread(admin.failed_job_ids, queue))[-args.failed :]
                for job_id in reversed(ids):  # newest failure first
                    job = await asyncio.to_thread(admin.failed_job, job_id)
                    if job is not None:
                        failed.append(job)
    if args.json:
        document: dict[str, Any] = {
            "queues": {c.queue: {name: getattr(c, name) for name in COUNT_COLUMNS} for c in counts},
            "workers": [asdict(worker) for worker in workers],
        }
        if args.failed:
            document["failed_jobs"] = [asdict(job) for job in failed]
        print_json(document)
        return EXIT_OK
    _print_counts(counts)
    print()
    _print_workers(workers)
    if args.failed:
        print()
        _print_failed(failed)
    return EXIT_OK


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _print_counts(counts: list[QueueCounts]) -> None:
    _table(
        ["QUEUE", *(name.upper() for name in COUNT_COLUMNS)],
        [[c.queue, *(str(getattr(c, name)) for name in COUNT_COLUMNS)] for c in counts],
    )


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = max(0, int((now - moment.astimezone(UTC)).total_seconds()))
    ago = f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({ago} ago)"


def _print_workers(workers: list[WorkerView]) -> None:
    if not workers:
        print("workers: none alive; nothing takes jobs from the queues")
        return
    now = datetime.now(UTC)
    print(f"workers: {len(workers)}")
    _table(
        ["NAME", "QUEUES", "STATE", "CURRENT JOB", "LAST HEARTBEAT", "DONE", "FAILED"],
        [
            [
                w.name,
                ",".join(w.queues),
                w.state,
                w.current_job_id or "-",
                _ago(w.last_heartbeat, now),
                str(w.successful_jobs),
                str(w.failed_jobs),
            ]
            for w in workers
        ],
    )


def _print_failed(failed: list[FailedJob]) -> None:
    if not failed:
        print("failed jobs: none")
        return
    print(f"failed jobs (newest first): {len(failed)}")
    for job in failed:
        ended = f"{job.ended_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z" if job.ended_at else "-"
        print(f"  {job.job_id}  [{job.queue}] {ended}  {job.description}")
        if job.error:
            print(f"      {job.error}")


# ---- requeue ----


async def run_requeue(args: argparse.Namespace, settings: Settings) -> int:
    if args.job_id and args.all:
        raise UsageError("give --job-id or --all, not both")
    if not args.job_id and not args.all and args.queue is None:
        raise UsageError("say which failed jobs: --job-id ID, --queue NAME or --all")
    queues = QUEUES if args.all or args.queue in (None, "all") else (args.queue,)
    retries = {QUEUE_INDEXING: settings.index_job_retries, QUEUE_RESCRAPE: settings.rescrape_job_retries}
    intervals = {
        QUEUE_INDEXING: settings.index_job_retry_intervals,
        QUEUE_RESCRAPE: settings.rescrape_job_retry_intervals,
    }
    async with operator_context(settings) as operator:
        admin = operator.admin
        if args.job_id:
            wanted = list(dict.fromkeys(args.job_id))
        else:
            wanted = [job for queue in queues for job in await asyncio.to_thread(admin.failed_job_ids, queue)]
        if not wanted:
            print(f"no failed jobs in {' or '.join(queues)}")
            return EXIT_OK
        requeued, problems = 0, 0
        for job_id in wanted:
            job = await asyncio.to_thread(admin.failed_job, job_id)
            if job is None or job.queue not in queues:
                problems += 1
                print(f"not requeued {job_id}: not a failed job of {' or '.join(queues)}", file=sys.stderr)
                continue
            reason = await _ready_change_event(operator, job, dry_run=args.dry_run)
            if reason is not None:
                problems += 1
                print(f"not requeued {job_id}: {reason}", file=sys.stderr)
                continue
            if args.dry_run:
                requeued += 1
                _say(args, f"would requeue {job_id} [{job.queue}] {job.description}")
                continue
            done = await asyncio.to_thread(
                admin.requeue, job_id, retries=retries[job.queue], retry_intervals=intervals[job.queue]
            )
            if done:
                requeued += 1
                _say(args, f"requeued {job_id} [{job.queue}] {job.description}")
            else:
                problems += 1
                print(f"not requeued {job_id}: it left the failed registry meanwhile", file=sys.stderr)
    verb = "would requeue" if args.dry_run else "requeued"
    print(f"{verb} {requeued} of {len(wanted)} failed jobs" + (f" ({problems} not)" if problems else ""))
    return EXIT_FAILED if problems else EXIT_OK


async def _ready_change_event(operator: Operator, job: FailedJob, *, dry_run: bool) -> str | None:
    """Re-open the job's change event (see `crawldex.changes.prepare_rerun`); why not to requeue, or None."""
    from crawldex.changes import prepare_rerun, rerun_obstacle

    if job.change_event_id is None:
        return None
    if dry_run:
        event = await operator.change_events.get(job.change_event_id)
        return rerun_obstacle(job.change_event_id, event, rescrape=job.is_rescrape)
    return await prepare_rerun(operator.change_events, job.change_event_id, rescrape=job.is_rescrape)


def _say(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line)
