"""Group commit: the items callers submit while one commit is in flight go together in the next one.

An API under load has several requests waiting on the same round trip to Redis at once; sending them as one
call costs the round trip's fixed part (the client's connection handling, the reply, the server's own work)
once for all of them. An idle caller waits for nothing: its item is committed at once, alone. A
DataLoader-style batcher (the items of one turn of the event loop) would not collect the requests that
arrive while a round trip is out, which is where a busy API has them, and would hold an idle caller for a
turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """``commit`` takes items in submission order and returns one result for each, in the same order.

    One commit is in flight at a time, of at most ``max_items`` items. A caller that finds none in flight
    commits its item at once, in its own task; items submitted meanwhile wait, and are committed together
    when it returns (by a task of this object's, for as long as items keep coming). If a commit raises,
    each of its callers gets the exception. A caller cancelled before its commit starts is left out of it.
    Bound to the event loop it is first used on.
    """

    def __init__(
        self, commit: Callable[[list[Item]], Awaitable[Sequence[Result]]], *, max_items: int
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._commit = commit
        self._max_items = max_items
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._busy = False  # a commit is in flight, or about to be
        self._committer: asyncio.Task[None] | None = None  # kept referenced while it runs

    async def submit(self, item: Item) -> Result:
        if self._busy:
            result: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, result))
            return await result
        self._busy = True
        try:
            return self._single(await self._commit([item]))
        finally:
            self._hand_over()

    @staticmethod
    def _single(results: Sequence[Result]) -> Result:
        if len(results) != 1:
            raise RuntimeError(f"a commit of 1 item returned {len(results)} results")
        return results[0]

    def _hand_over(self) -> None:
        """After a commit: the items that came meanwhile go next, else nothing is in flight."""
        if self._waiting:
            self._committer = asyncio.get_running_loop().create_task(self._commit_waiting())
        else:
            self._busy = False
            self._committer = None

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                group = [entry for entry in self._waiting[: self._max_items] if not entry[1].done()]
                del self._waiting[: self._max_items]
                if group:
                    await self._commit_group(group)
        finally:
            self._busy = False
            self._committer = None
            # Cancelled (the loop shutting down) with callers still waiting: they must not wait forever.
            for _, result in self._waiting:
                if not result.done():
                    result.set_exception(RuntimeError("the group commit stopped before this item's turn"))
            self._waiting.clear()

    async def _commit_group(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._commit([item for item, _ in group])
            if len(results) != len(group):
                raise RuntimeError(f"a commit of {len(group)} items returned {len(results)} results")
        except asyncio.CancelledError:
            for _, result in group:
                result.cancel()
            raise
        except Exception as exc:  # every caller of this commit gets its exception
            for _, result in group:
                if not result.done():
                    result.set_exception(exc)
            return
        for (_, result), value in zip(group, results, strict=True):
            if not result.done():
                result.set_result(value)
