"""The Helm chart's rendered output: scheduling of TEI, worker scaling and shutdown, secrets, k8s/."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.chart.conftest import CHART, ROOT, Obj, Render, RenderError, find, one, pod_spec

WORKERS = {"index-worker": "indexing", "rescrape-worker": "rescrape"}
TIMEOUTS = {
    "index-worker": "CRAWLDEX_INDEX_JOB_TIMEOUT_SECONDS",
    "rescrape-worker": "CRAWLDEX_RESCRAPE_JOB_TIMEOUT_SECONDS",
}
GPU = "nvidia.com/gpu"


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def config_data(objects: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = one(objects, "ConfigMap", "crawldex")["data"]
    return data


def workloads(objects: list[Obj]) -> list[Obj]:
    kinds = {"Deployment", "StatefulSet", "Job", "Pod"}
    return [o for o in objects if o["kind"] in kinds]


def gpu_limit(container: Obj) -> Any:
    return container.get("resources", {}).get("limits", {}).get(GPU)


# ---- TEI on GPU node pools ----


def test_gpu_tei_lands_only_on_gpu_nodes_with_a_gpu_limit(render: Render) -> None:
    objects = render("gpu-tei-values.yaml")
    tei = one(objects, "Deployment", "crawldex-tei")
    spec = pod_spec(tei)
    values = yaml.safe_load((CHART / "ci" / "gpu-tei-values.yaml").read_text())["tei"]["gpu"]

    # Only nodes of the GPU pool: its labels are required, its taint tolerated, one GPU per pod.
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (container,) = spec["containers"]
    assert gpu_limit(container) == 1
    # The image is TEI's build for the pool's architecture (Ada, sm89).
    assert container["image"] == "ghcr.io/huggingface/text-embeddings-inference:89-1.9"
    # The model cache survives restarts and the startup probe waits long enough for a download.
    cache = next(v for v in spec["volumes"] if v["name"] == "model-cache")
    assert cache["persistentVolumeClaim"]["claimName"] == "crawldex-tei-model-cache"
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600

    # Nothing else asks for a GPU or lands on the GPU pool.
    for obj in workloads(objects):
        if obj is tei:
            continue
        other = pod_spec(obj)
        assert "nvidia.com/gpu.present" not in other.get("nodeSelector", {}), obj["metadata"]["name"]
        assert all(gpu_limit(c) is None for c in other["containers"]), obj["metadata"]["name"]


@pytest.mark.parametrize(
    ("architecture", "tag"),
    [
        ("turing", "turing-1.9"),
        ("ampere80", "1.9"),
        ("ampere86", "86-1.9"),
        ("ada89", "89-1.9"),
        ("hopper", "hopper-1.9"),
    ],
)
def test_tei_image_tag_follows_the_gpu_architecture(render: Render, architecture: str, tag: str) -> None:
    objects = render(values={"tei": {"gpu": {"enabled": True, "architecture": architecture}}})
    (container,) = pod_spec(one(objects, "Deployment", "crawldex-tei"))["containers"]
    assert container["image"] == f"ghcr.io/huggingface/text-embeddings-inference:{tag}"
    assert gpu_limit(container) == 1


def test_cpu_tei_is_the_default_and_asks_for_no_gpu(render: Render) -> None:
    spec = pod_spec(one(render(), "Deployment", "crawldex-tei"))
    (container,) = spec["containers"]
    assert container["image"].endswith(":cpu-1.9")
    assert gpu_limit(container) is None
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec


def test_unknown_gpu_architecture_is_refused(render: Render) -> None:
    with pytest.raises(RenderError, match=r"not a key of tei\.tagPrefixes"):
        render(values={"tei": {"gpu": {"enabled": True, "architecture": "volta"}}})


def test_a_tei_model_without_its_tokenizer_is_refused(render: Render) -> None:
    with pytest.raises(RenderError, match="tokenizer"):
        render(values={"tei": {"model": "BAAI/bge-base-en-v1.5"}})


# ---- Workers: scaling on their own queue, shutdown longer than a job ----


def test_each_worker_has_a_scaledobject_on_its_own_queue(render: Render) -> None:
    objects = render("default-values.yaml")
    scaled = find(objects, "ScaledObject")
    assert len(scaled) == len(WORKERS)
    for component, queue in WORKERS.items():
        name = f"crawldex-{component}"
        timeout = int(config_data(objects)[TIMEOUTS[component]])
        so = one(objects, "ScaledObject", name)
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        lists = {t["metadata"]["listName"] for t in so["spec"]["triggers"]}
        # Waiting, running (RQ's started registry) and retry-scheduled jobs of this queue, nothing else.
        assert lists == {f"rq:queue:{queue}", f"rq:wip:{queue}", f"rq:scheduled:{queue}"}
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            assert trigger["authenticationRef"] == {"name": "crawldex-keda-redis"}
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
        running = next(t for t in so["spec"]["triggers"] if t["metadata"]["listName"].startswith("rq:wip:"))
        # Never fewer replicas than busy pods; an index-worker holds a batch's jobs started at once.
        batch = config_data(objects)["CRAWLDEX_INDEX_BATCH_PAGES"] if queue == "indexing" else "1"
        assert running["metadata"]["listLength"] == batch
        assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert so["spec"]["fallback"]["replicas"] >= 1

        deployment = one(objects, "Deployment", name)
        assert "replicas" not in deployment["spec"]  # KEDA owns the count
        spec = pod_spec(deployment)
        assert spec["terminationGracePeriodSeconds"] > timeout
        (container,) = spec["containers"]
        command = container["livenessProbe"]["exec"]["command"]
        assert command[:5] == ["python", "-m", "crawldex.probe", "--kind", component]
        assert float(command[command.index("--max-age") + 1]) > timeout
        assert "httpGet" not in container["livenessProbe"]

    auth = one(objects, "TriggerAuthentication", "crawldex-keda-redis")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "crawldex", "key": "redis-password"}
    ]


def test_grace_period_follows_each_workers_job_timeout(render: Render) -> None:
    objects = render(values={"config": {"indexJobTimeoutSeconds": 1800, "rescrapeJobTimeoutSeconds": 300}})
    data = config_data(objects)
    assert (data["CRAWLDEX_INDEX_JOB_TIMEOUT_SECONDS"], data["CRAWLDEX_RESCRAPE_JOB_TIMEOUT_SECONDS"]) == (
        "1800",
        "300",
    )
    for component, grace in (("index-worker", 1860), ("rescrape-worker", 360)):
        spec = pod_spec(one(objects, "Deployment", f"crawldex-{component}"))
        assert spec["terminationGracePeriodSeconds"] == grace


def test_a_grace_period_not_above_the_job_timeout_is_refused(render: Render) -> None:
    with pytest.raises(RenderError, match=r"must exceed config\.indexJobTimeoutSeconds"):
        render(values={"indexWorker": {"terminationGracePeriodSeconds": 600}})
    with pytest.raises(RenderError, match=r"must exceed config\.rescrapeJobTimeoutSeconds"):
        render(values={"rescrapeWorker": {"terminationGracePeriodSeconds": 120}})


def test_prometheus_option_scales_on_queued_plus_running_jobs(render: Render) -> None:
    objects = render("production-values.yaml")
    so = one(objects, "ScaledObject", "crawldex-index-worker")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    batch = config_data(objects)["CRAWLDEX_INDEX_BATCH_PAGES"]
    assert f'(max(crawldex_jobs_running{{queue="indexing"}}) or vector(0)) / {batch} +' in query
    assert 'max(crawldex_queue_depth{queue="indexing"})' in query
    assert trigger["metadata"]["threshold"] == "1"
    # The rescrape worker keeps its Redis triggers, on the external Redis named in keda.redis.address.
    rescrape = one(objects, "ScaledObject", "crawldex-rescrape-worker")
    assert {t["metadata"]["address"] for t in rescrape["spec"]["triggers"]} == {
        "redis-master.redis.svc.cluster.local:6379"
    }
    assert rescrape["spec"]["minReplicaCount"] == 0


def test_engine_none_renders_no_autoscaler_and_no_replicas_field(render: Render) -> None:
    objects = render(
        values={
            "indexWorker": {"autoscaling": {"engine": "none"}},
            "rescrapeWorker": {"autoscaling": {"engine": "none"}},
        }
    )
    assert find(objects, "ScaledObject") == []
    assert find(objects, "TriggerAuthentication") == []
    assert find(objects, "HorizontalPodAutoscaler") == []
    for component in WORKERS:
        # `kubectl scale` owns the count: no replicas field for an upgrade to reset it with.
        assert "replicas" not in one(objects, "Deployment", f"crawldex-{component}")["spec"]


def test_engine_hpa_renders_an_hpa_and_no_scaledobject(render: Render) -> None:
    objects = render("keda-off-values.yaml")
    assert find(objects, "ScaledObject") == []
    (hpa,) = find(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "crawldex-index-worker"
    assert hpa["spec"]["minReplicas"] == 2
    assert "replicas" not in one(objects, "Deployment", "crawldex-rescrape-worker")["spec"]


# ---- Secrets ----

SECRET_VALUES = {
    "apiToken": "tok-Zq8sWk2LmX9vBn4",
    "firecrawlWebhookSecret": "whsec-Hy7Tq2Pz5Rk8Lm3",
    "qdrantApiKey": "qdrant-Jd4Fs9Gh2Kl7Mn5",
    "hfToken": "hf-Xc3Vb8Nm1Qw6Er4Ty",
    "changedetectionToken": "cd-Po9Iu8Yt7Re6Wq5",
    "firecrawlApiKey": "fc-Lk4Jh3Gf2Ds1Az0",
}


def is_secret_name(name: str) -> bool:
    return name.endswith(("TOKEN", "SECRET", "PASSWORD", "API_KEY", "_AUTH")) or name in (
        "CRAWLDEX_DATABASE_URL",
        "CRAWLDEX_REDIS_URL",
    )


def _secret_strings(values: dict[str, str]) -> dict[str, str]:
    """Each secret, and its base64 form, as it could appear in a rendered object."""
    found = {}
    for key, value in values.items():
        found[f"{key} (plain)"] = value
        found[f"{key} (base64)"] = base64.b64encode(value.encode()).decode()
    return found


@pytest.mark.parametrize(
    ("files", "secrets"),
    [
        # Quick start: in-chart Redis and PostgreSQL, their passwords given.
        (
            (),
            SECRET_VALUES
            | {"redisPassword": "redispw-Ab3Cd5Ef7Gh9", "postgresPassword": "pgpw-Ij2Kl4Mn6Op8"},
        ),
        # External services: the URLs carry passwords.
        (
            ("gpu-tei-values.yaml",),
            SECRET_VALUES
            | {
                "databaseUrl": "postgresql+asyncpg://crawldex:dbpw-Qr5St7Uv9Wx1@db.internal:5432/crawldex",
                "redisUrl": "redis://:redispw-Yz2Ab4Cd6Ef8@redis.internal:6379/0",
            },
        ),
    ],
)
def test_secrets_appear_only_in_secret_objects(
    render: Render, files: tuple[str, ...], secrets: dict[str, str]
) -> None:
    values: dict[str, Any] = {"secrets": secrets}
    if "databaseUrl" in secrets:
        values |= {
            "postgresql": {"enabled": False},
            "redis": {"enabled": False},
            "keda": {"redis": {"address": "redis.internal:6379"}},
        }
    objects = render(*files, values=values)
    needles = _secret_strings(secrets)
    # The passwords inside the URLs must not leak on their own either.
    for key in ("databaseUrl", "redisUrl"):
        if key in secrets:
            password = secrets[key].split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
            needles |= _secret_strings({f"{key} password": password})
    in_secrets = ""
    for obj in objects:
        text = json.dumps(obj)
        if obj["kind"] == "Secret":
            in_secrets += text
            continue
        leaked = [label for label, needle in needles.items() if needle in text]
        assert not leaked, f"{obj['kind']}/{obj['metadata']['name']} carries {leaked}"
    for key, value in secrets.items():
        assert base64.b64encode(value.encode()).decode() in in_secrets, key

    # Every secret-looking env var of every container comes from a Secret (or is composed from one).
    for obj in workloads(objects):
        for container in pod_spec(obj)["containers"]:
            for name, entry in env_of(container).items():
                if not is_secret_name(name):
                    continue
                if "valueFrom" in entry:
                    assert "secretKeyRef" in entry["valueFrom"], name
                else:  # composed from a secret reference the kubelet resolves: $(CRAWLDEX_..._PASSWORD)
                    assert name in ("CRAWLDEX_DATABASE_URL", "CRAWLDEX_REDIS_URL"), name
                    assert "_PASSWORD)@" in entry["value"], name
    assert not [key for key in config_data(objects) if is_secret_name(key)]


def test_an_existing_secret_replaces_the_chart_secret(render: Render) -> None:
    objects = render("production-values.yaml")
    assert find(objects, "Secret") == []
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for obj in workloads(objects)
        for c in pod_spec(obj)["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"crawldex-secrets"}


def test_secret_values_next_to_an_existing_secret_are_refused(render: Render) -> None:
    with pytest.raises(RenderError, match="existingSecret"):
        render(values={"secrets": {"existingSecret": "mine", "apiToken": "x"}})


def test_secret_settings_in_plain_config_are_refused(render: Render) -> None:
    with pytest.raises(RenderError, match="looks secret"):
        render(values={"config": {"extra": {"CRAWLDEX_API_TOKEN": "oops"}}})


# ---- Migrations, ingress, monitoring ----


def test_migrations_run_in_a_hook_job_before_the_services(render: Render) -> None:
    external = render("production-values.yaml")
    job = one(external, "Job", "crawldex-migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = pod_spec(job)["containers"]
    assert container["command"] == ["python", "-m", "crawldex.db.migrate"]
    assert config_data(external)["CRAWLDEX_MIGRATE_ON_START"] == "false"
    # The in-chart PostgreSQL exists only after install: the first run is post-install.
    quick = render()
    job = one(quick, "Job", "crawldex-migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_ingress_exposes_only_the_webhooks_and_optionally_search(render: Render) -> None:
    def paths(objects: list[Obj]) -> set[str]:
        ingress = one(objects, "Ingress", "crawldex-ingest-api")
        rules = ingress["spec"]["rules"]
        assert all(p["pathType"] == "Exact" for r in rules for p in r["http"]["paths"])
        return {p["path"] for r in rules for p in r["http"]["paths"]}

    assert paths(render("default-values.yaml")) == {"/api/webhook/firecrawl", "/api/webhook/changedetection"}
    assert paths(render("production-values.yaml")) == {
        "/api/webhook/firecrawl",
        "/api/webhook/changedetection",
        "/api/search",
    }


def test_probes_of_ingest_api(render: Render) -> None:
    (container,) = pod_spec(one(render(), "Deployment", "crawldex-ingest-api"))["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True


def test_prometheus_rule_and_dashboards_come_from_the_files(render: Render) -> None:
    objects = render("default-values.yaml")
    rule = one(objects, "PrometheusRule", "crawldex-alerts")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts" / "crawldex.rules.yaml").read_text())
    dashboards = {
        key: json.loads(value)
        for cm in find(objects, "ConfigMap")
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        for key, value in cm["data"].items()
    }
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert dashboards == {f.name: json.loads(f.read_text()) for f in files}
    jobs = {
        sm["spec"]["endpoints"][0]["relabelings"][0]["replacement"] for sm in find(objects, "ServiceMonitor")
    }
    assert jobs == {
        "crawldex-ingest-api",
        "crawldex-index-worker",
        "crawldex-rescrape-worker",
        "text-embeddings-inference",
    }


def test_monitoring_objects_are_off_by_default(render: Render) -> None:
    objects = render()
    assert find(objects, "ServiceMonitor") == []
    assert find(objects, "PrometheusRule") == []
    assert not [cm for cm in find(objects, "ConfigMap") if "grafana_dashboard" in cm["metadata"]["labels"]]


# ---- k8s/ ----


def test_k8s_manifests_match_a_fresh_render(helm: str, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_k8s.py"), "--out", str(tmp_path), "--helm", helm],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "k8s"
    fresh_files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.yaml"))
    committed_files = sorted(
        p.relative_to(committed)
        for p in committed.rglob("*.yaml")
        if p.parts[len(committed.parts)] in ("manifests", "kustomization.yaml")
    )
    assert fresh_files == committed_files, "k8s/ is stale: run `make k8s`"
    for rel in fresh_files:
        assert (tmp_path / rel).read_text() == (committed / rel).read_text(), (
            f"k8s/{rel} is stale: run `make k8s`"
        )


# ---- Documentation ----


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_in_the_readme_table() -> None:
    documented: set[str] = set()
    for line in (CHART / "README.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        items = re.findall(r"`([^`]+)`", line.split("|")[1])
        base = items[0]
        keys = {base} | {base.rsplit(".", 1)[0] + item for item in items[1:] if item.startswith(".")}
        for key in keys:
            documented |= {key.replace("<worker>", w) for w in ("indexWorker", "rescrapeWorker")}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [
        leaf
        for leaf in _leaves(values)
        if not any(leaf == key or leaf.startswith(key + ".") for key in documented)
    ]
    assert not missing, f"values missing from charts/crawldex/README.md: {missing}"
