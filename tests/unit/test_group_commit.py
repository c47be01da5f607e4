"""GroupCommit: items that arrive while a commit is out go together in the next, each caller its own result."""

from __future__ import annotations

import asyncio

import pytest

from crawldex.group_commit import GroupCommit


class Committer:
    """Commits by doubling each item, holding each commit until released; notes every commit's items."""

    def __init__(self, *, fail_on: int | None = None, results_short: bool = False) -> None:
        self.commits: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on = fail_on
        self.results_short = results_short

    async def __call__(self, items: list[int]) -> list[int]:
        self.commits.append(items)
        await self.release.wait()
        if self.fail_on in items:
            raise ValueError(f"cannot commit {self.fail_on}")
        results = [item * 2 for item in items]
        return results[:-1] if self.results_short else results


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_idle_caller_commits_alone_and_at_once() -> None:
    committer = Committer()
    committer.release.set()
    group = GroupCommit(committer, max_items=8)

    assert await group.submit(3) == 6
    assert await group.submit(4) == 8
    assert committer.commits == [[3], [4]]


async def test_items_that_come_while_a_commit_is_out_go_together_in_order() -> None:
    committer = Committer()
    group = GroupCommit(committer, max_items=8)

    first = asyncio.create_task(group.submit(1))
    await _settle()
    others = [asyncio.create_task(group.submit(item)) for item in (2, 3, 4)]
    await _settle()
    assert committer.commits == [[1]]  # the others wait for the first commit to return
    committer.release.set()

    assert await first == 2
    assert [await task for task in others] == [4, 6, 8]
    assert committer.commits == [[1], [2, 3, 4]]


async def test_a_commit_takes_at_most_max_items() -> None:
    committer = Committer()
    group = GroupCommit(committer, max_items=2)

    tasks = [asyncio.create_task(group.submit(item)) for item in range(1, 6)]
    await _settle()
    committer.release.set()

    assert [await task for task in tasks] == [2, 4, 6, 8, 10]
    assert committer.commits == [[1], [2, 3], [4, 5]]


async def test_a_failed_commit_fails_its_own_callers_and_the_next_commit_still_runs() -> None:
    committer = Committer(fail_on=3)
    group = GroupCommit(committer, max_items=2)

    tasks = [asyncio.create_task(group.submit(item)) for item in range(1, 6)]
    await _settle()
    committer.release.set()
    answers = await asyncio.gather(*tasks, return_exceptions=True)

    assert answers[0] == 2
    assert [type(answer) for answer in answers[1:3]] == [ValueError, ValueError]  # committed with 3
    assert answers[3:] == [8, 10]
    assert committer.commits == [[1], [2, 3], [4, 5]]


async def test_a_failed_commit_of_an_idle_caller_reaches_it() -> None:
    committer = Committer(fail_on=1)
    committer.release.set()
    group = GroupCommit(committer, max_items=2)

    with pytest.raises(ValueError, match="cannot commit 1"):
        await group.submit(1)
    assert await group.submit(2) == 4  # nothing is left in flight


async def test_a_caller_cancelled_while_it_waits_is_left_out() -> None:
    committer = Committer()
    group = GroupCommit(committer, max_items=8)

    first = asyncio.create_task(group.submit(1))
    await _settle()
    gone = asyncio.create_task(group.submit(2))
    stays = asyncio.create_task(group.submit(3))
    await _settle()
    gone.cancel()
    committer.release.set()

    assert await first == 2
    assert await stays == 6
    assert gone.cancelled()
    assert committer.commits == [[1], [3]]


async def test_a_commit_that_answers_too_few_results_fails_its_callers() -> None:
    committer = Committer(results_short=True)
    group = GroupCommit(committer, max_items=8)

    first = asyncio.create_task(group.submit(1))
    await _settle()
    others = [asyncio.create_task(group.submit(item)) for item in (2, 3)]
    committer.release.set()

    with pytest.raises(RuntimeError, match="returned 0 results"):
        await first
    for task in others:
        with pytest.raises(RuntimeError, match="a commit of 2 items returned 1 results"):
            await task


async def test_callers_waiting_when_the_committer_is_cancelled_are_told_not_left_waiting() -> None:
    commits: list[list[int]] = []
    first_may_end = asyncio.Event()

    async def commit(items: list[int]) -> list[int]:
        commits.append(items)
        if items == [1]:
            await first_may_end.wait()
        elif items == [2]:
            await asyncio.Event().wait()  # a commit that never returns: only cancelling ends it
        return [item * 2 for item in items]

    group = GroupCommit(commit, max_items=1)
    first = asyncio.create_task(group.submit(1))
    await _settle()
    waiting = [asyncio.create_task(group.submit(item)) for item in (2, 3)]
    await _settle()
    first_may_end.set()
    assert await first == 2
    await _settle()
    assert commits == [[1], [2]]  # the group's own task holds [2] out; 3 waits its turn
    committer = group._committer  # what the loop cancels when it shuts down
    assert committer is not None
    committer.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    with pytest.raises(RuntimeError, match="stopped before this item's turn"):
        await waiting[1]
    assert await group.submit(4) == 8  # and the next caller commits again


def test_max_items_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(Committer(), max_items=0)
