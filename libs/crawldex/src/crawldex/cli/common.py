"""What every command shares: errors and exit codes, settings, connections, progress bars, waiting for jobs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError
from tqdm import tqdm

from crawldex.config import Settings

if TYPE_CHECKING:  # imported where used: `crawldex --help` should not wait for Redis and SQLAlchemy
    from crawldex.adapters.queue import JobQueue
    from crawldex.adapters.queue_admin import QueueAdmin
    from crawldex.db.change_events import ChangeEventRepository
    from crawldex.db.database import Database
    from crawldex.db.repository import DocumentRepository

EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed (a dependency down, a job failed, some records not imported)
EXIT_USAGE = 2  # bad arguments or configuration

PENDING_STATUSES = frozenset({"queued", "started", "scheduled", "deferred"})
POLL_SECONDS = 0.5


class CliError(Exception):
    """An expected failure: one line on stderr and an exit code, never a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills prose paragraphs to the terminal's width; keeps paragraphs with indented lines (tables, examples)
    as they are written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(paragraphs) + "\n"


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a number above 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return number


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def validation_message(exc: ValidationError, *, prefix: str = "") -> str:
    """Pydantic's errors as one line: ``field: reason; other: reason``."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{prefix}{location}: {message}" if location else message)
    return one_line("; ".join(parts))


def load_settings() -> Settings:
    """The services' own settings (CRAWLDEX_* environment variables); a bad value is a usage error."""
    try:
        return Settings()
    except ValidationError as exc:
        parts = []
        for error in exc.errors():
            variable = f"CRAWLDEX_{str(error['loc'][0]).upper()}" if error["loc"] else ""
            message = str(error["msg"]).removeprefix("Value error, ")
            parts.append(f"{variable}: {message}" if variable else message)
        raise UsageError(f"configuration error: {one_line('; '.join(parts))}") from exc


def progress(*, total: int | None, unit: str, quiet: bool, description: str | None = None) -> tqdm[Any]:
    """A progress bar on stderr, off with --quiet or when stderr is not a terminal (logs, pipes, CI)."""
    return tqdm(
        total=total,
        unit=unit,
        desc=description,
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )


def print_json(value: Any, out: TextIO | None = None) -> None:
    json.dump(value, out or sys.stdout, indent=2, default=_json_default, ensure_ascii=False)
    (out or sys.stdout).write("\n")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@asynccontextmanager
async def operator_context(settings: Settings) -> AsyncIterator[Operator]:
    """Redis (queues and registries) and, when a command first needs it, the database; closed at the end."""
    from crawldex.adapters.queue import JobQueue, connect_redis
    from crawldex.adapters.queue_admin import QueueAdmin

    connection = connect_redis(settings.redis_url)
    operator = Operator(settings, JobQueue(connection, settings), QueueAdmin(connection))
    try:
        yield operator
    finally:
        await operator.close()
        connection.close()


class Operator:
    """What a command works with. The database is connected on first use: status, requeue of jobs without a
    change event, and imports need only Redis."""

    def __init__(self, settings: Settings, queue: JobQueue, admin: QueueAdmin) -> None:
        self.settings = settings
        self.queue = queue
        self.admin = admin
        self._database: Database | None = None

    def _db(self) -> Database:
        from crawldex.db.database import Database

        if self._database is None:
            self._database = Database.connect(
                self.settings.effective_database_url, pool_size=self.settings.database_pool_size
            )
        return self._database

    @property
    def change_events(self) -> ChangeEventRepository:
        from crawldex.db.change_events import ChangeEventRepository

        return ChangeEventRepository(self._db())

    @property
    def documents(self) -> DocumentRepository:
        from crawldex.db.repository import DocumentRepository

        return DocumentRepository(self._db())

    async def close(self) -> None:
        if self._database is not None:
            await self._database.dispose()


@dataclass
class WaitReport:
    outcomes: Counter[str] = field(default_factory=Counter)  # indexed, unchanged, gone, failed, ...
    errors: dict[str, str] = field(default_factory=dict)  # job id → last error line
    pending: list[str] = field(default_factory=list)  # still pending when the wait timed out

    @property
    def ok(self) -> bool:
        return not self.pending and not self.outcomes["failed"] and not self.outcomes["missing"]

    def summary(self) -> str:
        counts = ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items()))
        text = f"jobs: {counts or 'none'}"
        if self.pending:
            text += f"; still pending: {len(self.pending)}"
        return text


def _outcome(status: str, result: Any) -> str:
    """finished index job → its result's status (indexed, unchanged, empty, superseded, gone)."""
    if status == "finished" and isinstance(result, dict) and isinstance(result.get("status"), str):
        return str(result["status"])
    return status


async def wait_for_jobs(
    admin: QueueAdmin,
    job_ids: Iterable[str],
    *,
    give_up_after: float,
    quiet: bool,
    description: str = "waiting",
) -> WaitReport:
    """Poll the jobs until none is pending (queued, running or waiting for a retry), or for
    ``give_up_after`` seconds."""
    waiting = list(dict.fromkeys(job_ids))
    report = WaitReport()
    deadline = time.monotonic() + give_up_after
    with progress(total=len(waiting), unit="job", quiet=quiet, description=description) as bar:
        while waiting:
            states = await asyncio.to_thread(admin.job_states, waiting)
            still = []
            for job_id in waiting:
                state = states[job_id]
                if state.status in PENDING_STATUSES:
                    still.append(job_id)
                    continue
                report.outcomes[_outcome(state.status, state.result)] += 1
                if state.error:
                    report.errors[job_id] = state.error
                bar.update(1)
            waiting = still
            if waiting and time.monotonic() >= deadline:
                report.pending = waiting
                break
            if waiting:
                await asyncio.sleep(POLL_SECONDS)
    return report


def warn_without_workers(admin: QueueAdmin, queue: str) -> None:
    """A wait with no worker on the queue would never end: say so at once."""
    if not any(queue in worker.queues for worker in admin.workers()):
        print(
            f"warning: no worker is serving the {queue} queue; the jobs wait until one runs",
            file=sys.stderr,
        )


async def wait_for_indexing(
    operator: Operator, job_ids: Iterable[str], *, give_up_after: float, quiet: bool, description: str
) -> WaitReport:
    """Warn if no index-worker is serving, then wait for the jobs on the indexing queue to end."""
    from crawldex.config import QUEUE_INDEXING

    await asyncio.to_thread(warn_without_workers, operator.admin, QUEUE_INDEXING)
    return await wait_for_jobs(
        operator.admin, job_ids, give_up_after=give_up_after, quiet=quiet, description=description
    )
