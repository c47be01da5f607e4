"""Fixtures of the chart tests: a helm binary (scripts/ensure-helm.sh fetches it once into .tools/) and a
renderer of the chart with any values."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "crawldex"
CI_VALUES = CHART / "ci"
RELEASE = NAMESPACE = "crawldex"

Obj = dict[str, Any]
Render = Callable[..., list[Obj]]


@pytest.fixture(scope="session")
def helm() -> str:
    result = subprocess.run(
        [str(ROOT / "scripts" / "ensure-helm.sh")], capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def helm_template(helm: str, tmp_path: Path, *files: str, values: dict[str, Any] | None = None) -> str:
    """`helm template` of the chart with ci/ values files (by name) and extra values; raises on failure."""
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.30.0"]
    for name in files:
        cmd += ["-f", str(CI_VALUES / name)]
    if values is not None:
        extra = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
        extra.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(extra)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return result.stdout


class RenderError(Exception):
    pass


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Render:
    def _render(*files: str, values: dict[str, Any] | None = None) -> list[Obj]:
        text = helm_template(helm, tmp_path, *files, values=values)
        return [doc for doc in yaml.safe_load_all(text) if doc]

    return _render


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"] if obj["kind"] != "Pod" else obj["spec"]
    return spec
