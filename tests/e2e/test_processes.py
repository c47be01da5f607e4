"""ingest-api and two index-workers as separate OS processes over Redis.

Without a Qdrant server each process keeps its own embedded store, so this test checks the queue:
jobs spread over both workers, all finish, and SIGTERM lets a running job finish. With
CRAWLDEX_QDRANT_URL set, all processes share that server and the test also searches across them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest
from rq import Worker

from tests.conftest import API_TOKEN
from tests.e2e.conftest import BIN, Deployment, free_port, wait_until_healthy

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def wait_for_workers(redis_connection: Any, count: int, deployment: Deployment, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(Worker.all(connection=redis_connection)) >= count:
            return
        for process in deployment.processes:
            if process.popen.poll() is not None:
                raise AssertionError(f"{process.name} exited:\n{process.output()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} workers registered within {timeout}s")


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
    return body


def wait_for(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = job(client, job_id)
        if current["status"] in statuses:
            return current
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job(client, job_id)}")


def long_page(sections: int) -> str:
    return "# Long page\n\n" + "\n\n".join(
        f"## Part {i}\n\n" + " ".join(f"Sentence {i}.{j} about index workers and queues." for j in range(40))
        for i in range(sections)
    )


def test_two_workers_share_the_queue_and_finish_on_sigterm(deployment: Deployment, clean_redis: Any) -> None:
    port = free_port()
    api = deployment.start_api(port)
    workers = [deployment.start_worker("worker-1"), deployment.start_worker("worker-2")]
    base_url = f"http://127.0.0.1:{port}"
    wait_until_healthy(api, base_url)
    wait_for_workers(clean_redis, 2, deployment)

    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as client:
        job_ids = []
        for i in range(24):
            page = {
                "url": f"https://e2e.example/page/{i}",
                "markdown": f"# Page {i}\n\n{long_page(2)} Unique word kiwi{i}.",
            }
            response = client.post("/api/index", json=page)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_id"])
        finished = [wait_for(client, job_id, {"finished", "failed"}) for job_id in job_ids]
        assert {j["status"] for j in finished} == {"finished"}, [j["error"] for j in finished]
        by_worker = {j["worker"] for j in finished}
        worker_pids = {int(name.split(".")[-2]) for name in by_worker}
        assert worker_pids == {w.pid for w in workers}, by_worker

        if "CRAWLDEX_QDRANT_URL" in os.environ:  # a shared store: what one worker wrote, the API finds
            for i in (0, 7, 23):
                hits = client.post("/api/search", json={"query": f"kiwi{i}", "mode": "keyword"}).json()[
                    "results"
                ]
                assert hits[0]["url"] == f"https://e2e.example/page/{i}"

        # A long job, then SIGTERM to the worker running it: the job finishes, then the worker exits.
        response = client.post(
            "/api/index", json={"url": "https://e2e.example/long", "markdown": long_page(120)}
        )
        long_job = response.json()["job_id"]
        started = wait_for(client, long_job, {"started", "finished"})
        assert started["status"] == "started", "the job finished before the signal; make the page longer"
        pid = int(started["worker"].split(".")[-2])
        running = next(w for w in workers if w.pid == pid)
        os.kill(pid, signal.SIGTERM)
        done = wait_for(client, long_job, {"finished", "failed"})
        assert done["status"] == "finished", done
        assert done["result"]["chunk_count"] > 50
        assert running.popen.wait(timeout=60) == 0
        assert "warm shut down requested" in running.output()
        other = next(w for w in workers if w.pid != pid)
        assert other.popen.poll() is None  # the other worker keeps serving


def test_rescrape_worker_serves_its_queue_and_stops_on_sigterm(
    deployment: Deployment, clean_redis: Any
) -> None:
    worker = deployment.start(
        "rescrape-worker", [str(BIN / "crawldex-rescrape-worker")], CRAWLDEX_METRICS_PORT=str(free_port())
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not Worker.all(connection=clean_redis):
        assert worker.popen.poll() is None, worker.output()
        time.sleep(0.2)
    [registered] = Worker.all(connection=clean_redis)
    assert registered.queue_names() == ["rescrape"]
    assert registered.name.endswith(f".{worker.pid}.rescrape-worker")
    probe = [str(BIN / "python"), "-m", "crawldex.probe", "--kind", "rescrape-worker"]
    env = deployment.env("probe")
    assert (
        subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0
    )  # the liveness probe
    assert worker.stop() == 0
    assert Worker.all(connection=clean_redis) == []
    assert subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 1
