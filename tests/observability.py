"""The shipped dashboards and Prometheus rules, read for tests.

`promql_expressions()` lists every PromQL expression that crawldex ships (Grafana panel targets and the
rule file's alerts and recording rules) in a form Prometheus can run as an instant query: Grafana's
variables are replaced by concrete values. tests/integration/test_alert_rules.py checks them offline
(promtool parses each one); a test against a real Prometheus can run each and require data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART_FILES = REPO_ROOT / "charts" / "crawldex" / "files"
DASHBOARDS_DIR = CHART_FILES / "dashboards"
ALERTS_DIR = CHART_FILES / "alerts"
RULES_FILE = ALERTS_DIR / "crawldex.rules.yaml"
RULES_TEST_FILE = ALERTS_DIR / "crawldex.rules.test.yaml"
OPERATIONS_DOC = REPO_ROOT / "docs" / "operations.md"

# Grafana's built-in variables, as an instant query over the last few minutes would see them.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
# Dashboard template variables (`$queue`) are only used in regex matchers (`queue=~"$queue"`): "All".
ALL_VALUES = ".*"

# $name, ${name}, ${name:format}, [[name]], [[name:format]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def concrete(expr: str) -> str:
    """`expr` with Grafana's variables replaced: built-ins by fixed durations, template variables by `.*`."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        if name.startswith("__"):
            raise ValueError(f"unknown Grafana built-in variable ${name} in {expr!r}")
        return ALL_VALUES

    return _VARIABLE.sub(replace, expr)


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(dashboard, dict):
        raise TypeError(f"{path}: a dashboard is a JSON object")
    return dashboard


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    stack: list[dict[str, Any]] = list(reversed(dashboard.get("panels", [])))
    while stack:
        panel = stack.pop()
        yield panel
        stack.extend(reversed(panel.get("panels", [])))


def load_rules() -> dict[str, Any]:
    rules = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    if not isinstance(rules, dict):
        raise TypeError(f"{RULES_FILE}: a rule file is a mapping with `groups`")
    return rules


def iter_rules() -> Iterator[dict[str, Any]]:
    """Every rule (alerting and recording) of the rule file."""
    for group in load_rules()["groups"]:
        yield from group["rules"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in iter_rules() if "alert" in rule]


def promql_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every PromQL expression in the dashboards and the rule file.

    `where` names the file and the panel target or rule, e.g.
    `dashboards/crawldex-overview.json panel 7 "Queue depth" target A` or
    `alerts/crawldex.rules.yaml alert CrawldexNoWorkers`. Expressions are ready for an instant query.
    An alert's expression returns series only while its condition holds, and the alerts read the recording
    rules' series (`queue:crawldex_...`), which exist only where Prometheus loads the rule file.
    """
    found: list[tuple[str, str]] = []
    for path in dashboard_files():
        for panel in iter_panels(load_dashboard(path)):
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if not expr:
                    continue
                where = (
                    f"{path.relative_to(CHART_FILES)} panel {panel.get('id')} "
                    f'"{panel.get("title", "")}" target {target.get("refId", "?")}'
                )
                found.append((where, concrete(expr)))
    rules_name = RULES_FILE.relative_to(CHART_FILES)
    for rule in iter_rules():
        kind, name = ("alert", rule["alert"]) if "alert" in rule else ("record", rule["record"])
        found.append((f"{rules_name} {kind} {name}", concrete(str(rule["expr"]).strip())))
    return found
