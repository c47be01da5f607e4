"""The shipped Prometheus rules and Grafana dashboards (charts/crawldex/files/): promtool accepts the rules
and passes their unit tests, every PromQL expression parses and names metrics crawldex exports, the
dashboards use the datasource variable, and every alert has a runbook in docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.metrics import MetricWrapperBase

from crawldex.telemetry import metrics
from tests.observability import (
    BUILTIN_VARIABLES,
    DASHBOARDS_DIR,
    OPERATIONS_DOC,
    REPO_ROOT,
    RULES_FILE,
    RULES_TEST_FILE,
    alert_rules,
    concrete,
    dashboard_files,
    iter_panels,
    iter_rules,
    load_dashboard,
    promql_expressions,
)

DASHBOARDS = ("crawldex-overview", "crawldex-pipeline", "crawldex-embedder", "crawldex-search")
ALERTS = {
    "CrawldexQueueOldestJobTooOld",
    "CrawldexNoCompletionsWhileQueued",
    "CrawldexJobFailureRatioHigh",
    "CrawldexTEIErrorsHigh",
    "CrawldexNoWorkers",
    "CrawldexRedisMemoryHigh",
    "CrawldexTargetDown",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RUNBOOK_BASE = "https://github.com/crawldex/crawldex/blob/main/docs/operations.md#"
# Read from Redis at scrape time by ingest-api's queue collector (see the end of telemetry/metrics.py).
QUEUE_GAUGES = (
    "crawldex_queue_depth",
    "crawldex_queue_oldest_job_age_seconds",
    "crawldex_jobs_running",
    "crawldex_jobs_scheduled",
    "crawldex_jobs_failed_registry",
    "crawldex_workers",
    "crawldex_redis_memory_used_bytes",
    "crawldex_redis_maxmemory_bytes",
)
# A metric name that is not part of a recorded name such as `queue:crawldex_workers:max`.
METRIC_NAME = re.compile(r"(?<![\w:])crawldex_\w+(?![\w:])")
RECORDED_NAME = re.compile(r"(?<![\w:])[a-z_]+:crawldex_\w+:\w+")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/ensure-prometheus.sh (scripts/test.sh does)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def _exposition_names() -> set[str]:
    """Every series name crawldex exports: counters with `_total`, histograms' three series, the gauges."""
    names = set(QUEUE_GAUGES)
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        (described,) = value.describe()
        if described.type == "counter":
            names.add(f"{described.name}_total")
        elif described.type == "histogram":
            names.update(f"{described.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(described.name)
    return names


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[`*_~]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _headings(level: str = "#") -> dict[str, str]:
    """anchor -> heading text, for every heading of docs/operations.md (outside code blocks)."""
    headings: dict[str, str] = {}
    in_code = False
    for line in OPERATIONS_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not in_code and match and match.group(1).startswith(level):
            headings[_github_anchor(match.group(2))] = match.group(2)
    return headings


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every key of every object in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


# --------------------------------------------------------------------------------------------- promtool


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES_FILE.relative_to(REPO_ROOT)))
    print(_output(result))
    assert result.returncode == 0, _output(result)


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(RULES_TEST_FILE.relative_to(REPO_ROOT)))
    print(_output(result))
    assert result.returncode == 0, _output(result)


def test_every_dashboard_expression_parses(promtool: str, tmp_path: Path) -> None:
    """promtool parses each expression, made concrete, as a recording rule: PromQL syntax, offline."""
    expressions = promql_expressions()
    rules = {
        "groups": [
            {
                "name": "syntax",
                "rules": [
                    {"record": f"crawldex_syntax_check_{index}", "expr": expr}
                    for index, (_, expr) in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "expressions.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    result = _run(promtool, "check", "rules", str(path))
    listing = "\n".join(f"crawldex_syntax_check_{i}: {where}" for i, (where, _) in enumerate(expressions))
    assert result.returncode == 0, f"{_output(result)}\n--- expressions\n{listing}"


# --------------------------------------------------------------------------------------------- expressions


def test_promql_expressions_cover_every_target_and_rule() -> None:
    expressions = promql_expressions()
    targets = sum(
        1
        for path in dashboard_files()
        for panel in iter_panels(load_dashboard(path))
        for target in panel.get("targets", [])
        if target.get("expr")
    )
    assert len(expressions) == targets + len(list(iter_rules()))
    assert len({where for where, _ in expressions}) == len(expressions)
    for where, expr in expressions:
        assert "$" not in expr, f"{where}: a variable is left in {expr!r}"
        assert "[[" not in expr, f"{where}: a variable is left in {expr!r}"


def test_concrete_replaces_grafana_variables() -> None:
    assert concrete('rate(x{queue=~"$queue"}[$__rate_interval])') == 'rate(x{queue=~".*"}[1m])'
    assert concrete("increase(x[${__range}]) / $__range_s") == "increase(x[5m]) / 300"
    assert concrete('x{a=~"${a:regex}", b=~"[[b]]"}[$__interval]') == 'x{a=~".*", b=~".*"}[1m]'
    assert set(BUILTIN_VARIABLES) >= {"__rate_interval", "__interval", "__range"}
    with pytest.raises(ValueError, match="__unknown"):
        concrete("x[$__unknown]")


def test_expressions_name_only_metrics_crawldex_exports() -> None:
    exported = _exposition_names()
    recorded = {rule["record"] for rule in iter_rules() if "record" in rule}
    for where, expr in promql_expressions():
        for name in METRIC_NAME.findall(expr):
            assert name in exported, (
                f"{where}: {name} is not a crawldex metric (exported: {sorted(exported)})"
            )
        for name in RECORDED_NAME.findall(expr):
            assert name in recorded, f"{where}: {name} is not recorded by {RULES_FILE.name}"


def test_dashboard_rates_use_the_rate_interval() -> None:
    for where, expr in _dashboard_expressions():
        for window in re.findall(r"\b(?:rate|irate)\([^\[]*\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{where}: rate over [{window}] in {expr!r}"


def test_queue_gauges_are_taken_once_per_queue() -> None:
    """Every ingest-api replica reports the same queue gauges: dashboards take their max, never a sum."""
    for where, expr in _dashboard_expressions():
        for gauge in QUEUE_GAUGES:
            for match in re.finditer(rf"(?<![\w:]){gauge}(?![\w:])", expr):
                before = expr[: match.start()].rstrip()
                assert before.endswith(("max by (queue) (", "max(")), f"{where}: {gauge} not under max"


def _dashboard_expressions() -> list[tuple[str, str]]:
    return [
        (f"{path.name} panel {panel.get('id')}", str(target["expr"]))
        for path in dashboard_files()
        for panel in iter_panels(load_dashboard(path))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


# --------------------------------------------------------------------------------------------- dashboards


def test_the_four_dashboards_ship() -> None:
    assert sorted(path.stem for path in dashboard_files()) == sorted(DASHBOARDS)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_valid(name: str) -> None:
    dashboard = load_dashboard(DASHBOARDS_DIR / f"{name}.json")
    assert dashboard["uid"] == name
    assert dashboard["title"].startswith("crawldex / ")
    assert dashboard["tags"] == ["crawldex"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None, "a provisioned dashboard has no database id"
    panels = list(iter_panels(dashboard))
    assert any(panel["type"] != "row" for panel in panels)
    for panel in panels:
        assert panel.get("title"), f"{name}: panel {panel.get('id')} has no title"
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{name}: panel {panel['title']!r} has no description"
        assert panel.get("targets"), f"{name}: panel {panel['title']!r} queries nothing"
        for pos in ("x", "y", "w", "h"):
            assert isinstance(panel["gridPos"][pos], int)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_panel_ids_are_unique(name: str) -> None:
    ids = [panel["id"] for panel in iter_panels(load_dashboard(DASHBOARDS_DIR / f"{name}.json"))]
    assert all(isinstance(panel_id, int) for panel_id in ids)
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {sorted(ids)}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_uses_the_datasource_variable(name: str) -> None:
    dashboard = load_dashboard(DASHBOARDS_DIR / f"{name}.json")
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for path, key, value in _walk(dashboard):
        if key == "datasource":
            assert value == DATASOURCE, f"{name}: {path}.datasource is {value!r}, not the variable"
        if key == "uid" and path:
            assert value == "${datasource}", f"{name}: hard-coded uid {value!r} at {path}"
    for panel in iter_panels(dashboard):
        if panel["type"] != "row":
            assert panel.get("datasource") == DATASOURCE, f"{name}: panel {panel['title']!r}"
            for target in panel["targets"]:
                assert target.get("datasource") == DATASOURCE, f"{name}: panel {panel['title']!r}"


# --------------------------------------------------------------------------------------------- alerts


def test_the_alerts_ship() -> None:
    assert {rule["alert"] for rule in alert_rules()} == ALERTS


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_has_severity_annotations_and_a_runbook(alert: str) -> None:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == alert]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{alert}: no {key}"
    url = annotations["runbook_url"]
    assert url.startswith(RUNBOOK_BASE), url
    anchor = url.removeprefix(RUNBOOK_BASE)
    assert anchor == alert.lower()
    headings = _headings("###")
    assert anchor in headings, f"docs/operations.md has no heading for #{anchor}"
    assert headings[anchor] == alert, f"the runbook heading should read exactly {alert}"


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    tests = yaml.safe_load(RULES_TEST_FILE.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES_FILE.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing >= ALERTS, f"no firing case for {sorted(ALERTS - firing)}"
    assert silent >= ALERTS, f"no silent case for {sorted(ALERTS - silent)}"
