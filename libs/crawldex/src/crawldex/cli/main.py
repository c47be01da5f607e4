"""`crawldex`: the operator's command line. Parses arguments, runs one command, turns failures into exit codes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from crawldex.cli import importing, reconcile, reindex, search, status
from crawldex.cli.common import EXIT_FAILED, EXIT_USAGE, CliError, HelpFormatter, load_settings, one_line

DESCRIPTION = """\
Operate a crawldex deployment: queue state, failed jobs, bulk imports, search, re-indexing, removal and
crawl reconciliation.
Reads the same CRAWLDEX_* settings as the services (docs/configuration.md) and talks to their Redis,
database and vector store directly.
"""
EPILOG = """\
exit codes: 0 done; 1 the operation failed (a dependency is down, a job failed, records were skipped);
2 bad arguments or configuration.
Run `crawldex COMMAND --help` for a command's options. More: docs/operations.md, "Operator CLI".
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars and no per-item lines, only the summary"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log what the core library does (INFO) on stderr"
    )
    parser = argparse.ArgumentParser(
        prog="crawldex",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (status, importing, search, reindex, reconcile):
        module.register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging(verbose=args.verbose)
    try:
        settings = load_settings()
        result: int = asyncio.run(args.handler(args, settings))
    except CliError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:
        expected = _expected_failure(exc)
        if expected is None:
            raise
        _error(expected[0])
        return expected[1]
    return result


def _expected_failure(exc: Exception) -> tuple[str, int] | None:
    """Failures of the world, not of crawldex: a dependency down, a refused configuration, a bad schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from crawldex.errors import ConfigurationError, DependencyUnavailableError

    if isinstance(exc, DependencyUnavailableError):
        return f"{exc.dependency} is unavailable: {one_line(str(exc).removeprefix(exc.dependency + ': '))}", (
            EXIT_FAILED
        )
    if isinstance(exc, ConfigurationError):
        return f"configuration error: {one_line(exc)}", EXIT_USAGE
    if isinstance(exc, SQLAlchemyError):
        # Most likely a database without crawldex's tables: the migrations have not run there.
        detail = one_line(getattr(exc, "orig", None) or exc)
        return (
            f"database error: {detail} (are the migrations applied? python -m crawldex.db.migrate)",
            EXIT_FAILED,
        )
    return None


def _error(message: str) -> None:
    print(f"crawldex: error: {one_line(message)}", file=sys.stderr)


def _configure_logging(*, verbose: bool) -> None:
    """--verbose: the services' text log lines at INFO. Otherwise nothing is set up, and Python prints the
    core's warnings and errors, bare, on stderr."""
    if verbose:
        from crawldex.logs import configure_logging

        configure_logging("INFO", "text")
