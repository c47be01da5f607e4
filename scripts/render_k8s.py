"""Render k8s/ from the Helm chart (`make k8s`): one file per object under k8s/manifests/ and the
kustomization.yaml that lists them, so that `kubectl apply -k k8s` installs what `helm install` would with
k8s/values.yaml. tests/chart/test_chart.py renders into a temporary directory and compares.

    python scripts/render_k8s.py [--out DIR] [--helm PATH]

Needs PyYAML (the project's .venv has it) and helm (scripts/ensure-helm.sh).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "crawldex"
RELEASE = NAMESPACE = "crawldex"
HEADER = (
    "# Rendered from charts/crawldex with k8s/values.yaml by `make k8s`: do not edit, re-render.\n"
    "# tests/chart/test_chart.py fails when this file differs from a fresh render.\n"
)


def render(helm: str, values: Path) -> list[dict[str, object]]:
    result = subprocess.run(  # noqa: S603 - helm, with arguments of our own
        [
            helm,
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            "1.30.0",
            "-f",
            str(values),
        ],
        text=True,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def write(objects: list[dict[str, object]], out: Path) -> None:
    manifests = out / "manifests"
    shutil.rmtree(manifests, ignore_errors=True)
    manifests.mkdir(parents=True)
    names: list[str] = []
    for obj in objects:
        metadata = obj["metadata"]
        assert isinstance(metadata, dict)
        name = f"{str(obj['kind']).lower()}-{metadata['name']}.yaml"
        if name in names:
            sys.exit(f"two objects would be written to {name}")
        names.append(name)
        text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120)
        (manifests / name).write_text(HEADER + text)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": [f"manifests/{name}" for name in sorted(names)],
    }
    (out / "kustomization.yaml").write_text(
        HEADER
        + "# Create the namespace and the Secret first (k8s/README.md); change `namespace` here to install elsewhere.\n"
        + yaml.safe_dump(kustomization, sort_keys=False)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "k8s")
    parser.add_argument("--helm", default=str(ROOT / ".tools" / "bin" / "helm"))
    parser.add_argument("--values", type=Path, default=ROOT / "k8s" / "values.yaml")
    args = parser.parse_args()
    objects = render(args.helm, args.values)
    write(objects, args.out)
    print(f"render_k8s: {len(objects)} objects into {args.out}/manifests", file=sys.stderr)


if __name__ == "__main__":
    main()
