from __future__ import annotations

import asyncio
import signal

import pytest

from crawldex.jobs import JobLoop


def test_returns_the_result_and_keeps_the_loop() -> None:
    loop = JobLoop()
    try:
        assert loop.run(asyncio.sleep(0, result=7)) == 7
        assert loop.run(asyncio.sleep(0, result=8)) == 8
    finally:
        loop.close()


def test_a_timed_out_job_leaves_no_task_behind() -> None:
    loop = JobLoop()
    writes: list[str] = []

    async def slow_job() -> None:
        async def late_write() -> None:
            await asyncio.sleep(2)
            writes.append("stale write")

        background = asyncio.create_task(late_write())
        await asyncio.sleep(30)
        await background

    try:
        with pytest.raises(TimeoutError):
            loop.run(slow_job(), timeout=JobLoop.TIMEOUT_MARGIN_SECONDS + 0.1)
        assert loop.pending_tasks() == []
        loop.run(asyncio.sleep(2.5))  # the next job: a surviving task would write now
        assert writes == []
    finally:
        loop.close()


def test_a_signal_raised_into_the_loop_cancels_the_job() -> None:
    """RQ's death penalty: SIGALRM whose handler raises, wherever the main thread happens to be."""

    class DeathPenaltyError(Exception):
        pass

    def alarm(_signum: int, _frame: object) -> None:
        raise DeathPenaltyError

    loop = JobLoop()
    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(DeathPenaltyError):
            loop.run(asyncio.sleep(30))
        assert loop.pending_tasks() == []
        assert loop.run(asyncio.sleep(0, result="next job")) == "next job"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        loop.close()
