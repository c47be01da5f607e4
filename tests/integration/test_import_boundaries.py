"""What each service's entry point loads, checked in a fresh interpreter: workers never import the web
framework, and an index worker loads neither the migration tool (the chart's migration Job migrates) nor the
built-in fetcher's HTML parsers (it fetches nothing); each is imported where it is used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WEB_FRAMEWORK = ("fastapi", "starlette", "uvicorn")
MIGRATIONS = ("alembic", "mako")
HTML_PARSERS = ("bs4", "markdownify")


def fresh_interpreter_output(script: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def loaded_after_import(module: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of ``candidates`` are in ``sys.modules`` once a fresh interpreter has imported ``module``."""
    script = (
        f"import json, sys, {module}\n"
        f"print(json.dumps([name for name in {list(candidates)!r} if name in sys.modules]))\n"
    )
    loaded: list[str] = json.loads(fresh_interpreter_output(script))
    return loaded


@pytest.mark.parametrize("entry_point", ["index_worker.__main__", "rescrape_worker.__main__"])
def test_a_worker_does_not_import_the_web_framework(entry_point: str) -> None:
    assert loaded_after_import(entry_point, WEB_FRAMEWORK) == []


def test_an_index_worker_loads_neither_migrations_nor_html_parsers_until_it_needs_them() -> None:
    assert loaded_after_import("index_worker.__main__", MIGRATIONS + HTML_PARSERS) == []


def test_the_built_in_fetcher_is_imported_when_a_service_makes_one() -> None:
    script = (
        "import sys\n"
        "from crawldex.config import Settings\n"
        "from crawldex.services import make_fetcher\n"
        "fetcher = make_fetcher(Settings(firecrawl_url=None))\n"
        "print(type(fetcher).__name__, 'bs4' in sys.modules)\n"
    )
    assert fresh_interpreter_output(script).split() == ["BuiltinFetcher", "True"]
