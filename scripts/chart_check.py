"""Offline checks of the Helm chart, the k8s/ manifests and the Dockerfiles (`make chart-check`).

Run with the chart-tools venv (scripts/ensure-chart-tools.sh) and a helm binary (scripts/ensure-helm.sh):

    chart_check.py lint       helm lint --strict, once per ci/*-values.yaml
    chart_check.py template   helm template per ci values file into .tools/render/
    chart_check.py check      both, then: every rendered object (and every k8s/manifests object) validated
                              with kubernetes-validate (strict, Kubernetes 1.30 and the newest schema it
                              ships), KEDA and prometheus-operator objects against their CRD schemas in
                              k8s/crds (jsonschema, unknown fields refused), `kubectl kustomize k8s`,
                              checkov on the renders and the Dockerfiles, hadolint on the Dockerfiles.

Exits non-zero on the first failing step, with what failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "crawldex"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RENDER_DIR = ROOT / ".tools" / "render"
K8S_DIR = ROOT / "k8s"
# What is rendered, checked and scanned: every ci values file, and the values k8s/ is rendered with.
RENDERS = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES} | {"k8s": K8S_DIR / "values.yaml"}
CRD_DIR = K8S_DIR / "crds"
DOCKERFILES = sorted((ROOT / "services").glob("*/Dockerfile"))
RELEASE, NAMESPACE = "crawldex", "crawldex"
MIN_KUBE_VERSION = "1.30.0"
KUBE_VERSIONS = [MIN_KUBE_VERSION, kubernetes_validate.latest_version()]


def step(title: str) -> None:
    print(f"chart-check: {title}", flush=True)


def fail(message: str) -> None:
    print(f"chart-check: FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, check=False, **kwargs)  # noqa: S603


def helm() -> str:
    return os.environ.get("HELM", str(ROOT / ".tools" / "bin" / "helm"))


def lint() -> None:
    for values in [None, *RENDERS.values()]:
        cmd = [helm(), "lint", "--strict", "--kube-version", MIN_KUBE_VERSION, str(CHART)]
        if values is not None:
            cmd += ["-f", str(values)]
        result = run(cmd)
        label = str(values.relative_to(ROOT)) if values else "values.yaml (defaults)"
        if result.returncode != 0:
            fail(f"helm lint --strict ({label}):\n{result.stdout}{result.stderr}")
        step(f"helm lint --strict {label}: ok")


def render(values: Path | None) -> str:
    cmd = [
        helm(),
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        MIN_KUBE_VERSION,
    ]
    if values is not None:
        cmd += ["-f", str(values)]
    result = run(cmd)
    if result.returncode != 0:
        fail(f"helm template ({values.relative_to(ROOT) if values else 'defaults'}):\n{result.stderr}")
    return result.stdout


def template() -> dict[str, list[dict[str, Any]]]:
    """Render every values file of RENDERS into .tools/render/<name>.yaml; return the objects per file."""
    shutil.rmtree(RENDER_DIR, ignore_errors=True)
    RENDER_DIR.mkdir(parents=True)
    renders: dict[str, list[dict[str, Any]]] = {}
    for name, values in RENDERS.items():
        text = render(values)
        (RENDER_DIR / f"{name}.yaml").write_text(text)
        renders[name] = [doc for doc in yaml.safe_load_all(text) if doc]
        kinds = sorted({doc["kind"] for doc in renders[name]})
        step(f"helm template {values.relative_to(ROOT)}: {len(renders[name])} objects ({', '.join(kinds)})")
    return renders


def strict_schema(schema: Any) -> Any:
    """An openAPIV3Schema that refuses unknown fields, as the API server's strict field validation does."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def validate_objects(label: str, objects: list[dict[str, Any]], crds: dict[Any, Any]) -> None:
    for obj in objects:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        name = f"{label}: {kind}/{obj.get('metadata', {}).get('name')}"
        if (api_version, kind) in crds:
            errors = sorted(crds[(api_version, kind)].iter_errors(obj), key=lambda e: list(e.path))
            if errors:
                fail(
                    f"{name} does not match its CRD schema:\n"
                    + "\n".join(f"  {'/'.join(map(str, e.path))}: {e.message}" for e in errors)
                )
            continue
        group = api_version.split("/")[0] if "/" in api_version else ""
        if "." in group and not group.endswith(".k8s.io"):
            fail(f"{name}: {api_version} has no schema in k8s/crds")
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                fail(f"{name} (Kubernetes {version}): {exc.message} at {'/'.join(map(str, exc.path))}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
                fail(f"{name} (Kubernetes {version}): {exc}")


def k8s_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted((K8S_DIR / "manifests").glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def kustomize() -> None:
    kubectl = ROOT / ".tools" / "bin" / "kubectl"
    result = run([str(kubectl), "kustomize", str(K8S_DIR)])
    if result.returncode != 0:
        fail(f"kubectl kustomize k8s:\n{result.stderr}")
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    expected = len(k8s_objects())
    if len(built) != expected:
        fail(f"kubectl kustomize k8s built {len(built)} objects, k8s/manifests holds {expected}")
    step(f"kubectl kustomize k8s: {len(built)} objects")


def checkov() -> None:
    tools_bin = Path(sys.executable).parent
    config = ROOT / ".checkov.yaml"
    # checkov leaves out paths under hidden directories (.tools/...) when given them whole: it runs inside
    # the render directory instead. --skip-download and BC_SKIP_MAPPING keep it offline.
    runs = (
        ("kubernetes", RENDER_DIR, ["--directory", "."]),
        ("dockerfile", ROOT, [a for p in DOCKERFILES for a in ("--file", str(p.relative_to(ROOT)))]),
    )
    for framework, cwd, args in runs:
        started = time.monotonic()
        result = run(
            [
                str(tools_bin / "checkov"),
                "--config-file",
                str(config),
                "--framework",
                framework,
                "--output",
                "json",
                "--quiet",
                "--compact",
                "--skip-download",
                *args,
            ],
            cwd=cwd,
            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        )
        try:
            report = json.loads(result.stdout) if result.stdout.strip() else {}
        except json.JSONDecodeError:
            fail(f"checkov ({framework}) printed no JSON:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        reports = report if isinstance(report, list) else [report]
        summaries = [r.get("summary", r) for r in reports]
        failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
        passed = sum(s.get("passed", 0) for s in summaries)
        skipped = sum(s.get("skipped", 0) for s in summaries)
        resources = sum(s.get("resource_count", 0) for s in summaries)
        if failed:
            fail(
                f"checkov ({framework}): {len(failed)} failed checks:\n"
                + "\n".join(
                    f"  {c['check_id']} {c['check_name']}: {c.get('resource')} ({Path(c.get('file_path', '')).name})"
                    for c in failed
                )
            )
        if result.returncode != 0:
            fail(f"checkov ({framework}) exited {result.returncode}:\n{result.stderr[-2000:]}")
        if resources == 0 or passed == 0:
            fail(f"checkov ({framework}) scanned nothing ({resources} resources): check its paths")
        step(
            f"checkov {framework}: {resources} resources, {passed} checks passed, 0 failed, {skipped} skipped "
            f"inline (.checkov.yaml lists the checks skipped everywhere, with reasons) in {time.monotonic() - started:.0f}s"
        )


def hadolint() -> None:
    binary = Path(sys.executable).parent / "hadolint"
    result = run([str(binary), "--config", str(ROOT / ".hadolint.yaml"), *map(str, DOCKERFILES)])
    if result.returncode != 0:
        fail(f"hadolint:\n{result.stdout}{result.stderr}")
    version = run([str(binary), "--version"]).stdout.strip()
    step(f"hadolint ({version}): {len(DOCKERFILES)} Dockerfiles clean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["lint", "template", "check"])
    args = parser.parse_args()
    if args.command == "lint":
        lint()
        return
    if args.command == "template":
        template()
        return
    started = time.monotonic()
    lint()
    renders = template()
    crds = crd_validators()
    for name, objects in renders.items():
        validate_objects(name, objects, crds)
        step(f"validated {name}: {len(objects)} objects (Kubernetes {', '.join(KUBE_VERSIONS)}, CRD schemas)")
    validate_objects("k8s/manifests", k8s_objects(), crds)
    step(f"validated k8s/manifests: {len(k8s_objects())} objects")
    kustomize()
    hadolint()
    checkov()
    step(f"all checks passed in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
