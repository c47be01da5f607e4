"""The worker's heartbeat thread: one for every job, beating while jobs run and never after one ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, cast

from rq.job import Job

from crawldex.worker import JobHeartbeat

INTERVAL = 0.05
PATIENCE = 30.0  # seconds a test waits for what must happen


class FakeJob:
    def __init__(self, job_id: str) -> None:
        self.id = job_id


def as_job(job: FakeJob) -> Job:
    return cast(Job, job)


class Beats:
    """Records each beat: the job's id and the thread that sent it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.beats: list[tuple[str, int]] = []
        self.changed = threading.Condition(self.lock)

    def __call__(self, jobs: Sequence[Job]) -> None:
        with self.changed:
            self.beats.extend((job.id, threading.get_ident()) for job in jobs)
            self.changed.notify_all()

    def wait_for(self, job_id: str, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.of(job_id) >= count, PATIENCE)

    def of(self, job_id: str) -> int:
        return sum(1 for beat_job, _ in self.beats if beat_job == job_id)


def test_beats_while_jobs_run_from_one_thread() -> None:
    beats = Beats()
    heartbeat = JobHeartbeat(beats, INTERVAL, name="heartbeat-test")
    threads_before = threading.active_count()
    try:
        for job_id in ("first", "second"):
            with heartbeat.running([as_job(FakeJob(job_id))]):
                assert beats.wait_for(job_id, 2)
                assert threading.active_count() == threads_before  # no thread per job
        assert len({thread for _, thread in beats.beats}) == 1
    finally:
        heartbeat.close()


def test_no_beat_follows_the_end_of_a_job() -> None:
    """A job that ends while a beat is in flight waits for it; nothing beats for it afterwards."""
    in_beat = threading.Event()
    events: list[str] = []

    def slow_beat(jobs: Sequence[Job]) -> None:
        (job,) = jobs
        events.append(f"start {job.id}")
        in_beat.set()
        time.sleep(0.2)  # Redis answering slowly
        events.append(f"end {job.id}")

    heartbeat = JobHeartbeat(slow_beat, INTERVAL, name="heartbeat-test")
    try:
        with heartbeat.running([as_job(FakeJob("job"))]):
            assert in_beat.wait(PATIENCE)
        assert events[-1] == "end job"
        seen = list(events)
        time.sleep(INTERVAL * 6)
        assert events == seen
    finally:
        heartbeat.close()


def test_a_failing_beat_does_not_stop_later_ones() -> None:
    beats = Beats()
    calls: list[int] = []

    def flaky(jobs: Sequence[Job]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a broken beat")
        beats(jobs)

    heartbeat = JobHeartbeat(flaky, INTERVAL, name="heartbeat-test")
    try:
        with heartbeat.running([as_job(FakeJob("job"))]):
            assert beats.wait_for("job", 2)
    finally:
        heartbeat.close()


def test_a_batch_beats_for_each_job_until_it_is_released() -> None:
    """A batch's jobs are performed one after another; a job that has ended gets no more beats while the
    rest of its batch still runs."""
    beats = Beats()
    heartbeat = JobHeartbeat(beats, INTERVAL, name="heartbeat-test")
    first, second = as_job(FakeJob("first")), as_job(FakeJob("second"))
    try:
        with heartbeat.running([first, second]):
            assert beats.wait_for("first", 2)
            assert beats.wait_for("second", 2)
            heartbeat.release(first)
            released_at = beats.of("first")
            assert beats.wait_for("second", beats.of("second") + 3)
            assert beats.of("first") == released_at
    finally:
        heartbeat.close()


def test_close_stops_the_thread() -> None:
    heartbeat = JobHeartbeat(lambda jobs: None, 3600, name="heartbeat-closing")
    heartbeat.close()
    names: list[Any] = [thread.name for thread in threading.enumerate()]
    assert "heartbeat-closing" not in names
