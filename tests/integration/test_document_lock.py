"""The per-document lock is a lease: held as long as its holder lives, freed soon after it dies."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time

import pytest
import redis.asyncio as aioredis

from crawldex.adapters.redis_lock import LockLostError, RedisDocumentLock
from crawldex.errors import DependencyUnavailableError

LEASE = 0.6
KILLED_LEASE = 3.0  # long enough to see the dead holder's lock still there on a busy machine


async def test_a_holder_keeps_its_lock_past_the_lease(redis_url: str, clean_redis: object) -> None:
    connection = aioredis.Redis.from_url(redis_url)
    holder = RedisDocumentLock(connection, lease_seconds=LEASE, wait_seconds=0.1)
    other = RedisDocumentLock(connection, lease_seconds=LEASE, wait_seconds=0.1)
    try:
        async with holder.hold("page"):
            await asyncio.sleep(LEASE * 4)  # renewed meanwhile
            with pytest.raises(DependencyUnavailableError, match="stayed locked"):
                async with other.hold("page"):
                    pass
        async with other.hold("page"):  # released on exit
            pass
    finally:
        await connection.aclose()


async def test_a_batch_holds_the_lock_of_each_of_its_documents(redis_url: str, clean_redis: object) -> None:
    connection = aioredis.Redis.from_url(redis_url)
    batch = RedisDocumentLock(connection, lease_seconds=LEASE, wait_seconds=0.1)
    other = RedisDocumentLock(connection, lease_seconds=LEASE, wait_seconds=0.1)
    try:
        async with batch.hold_many(["second", "first", "second"]):
            await asyncio.sleep(LEASE * 2)  # renewed meanwhile, together
            for key in ("first", "second"):
                with pytest.raises(DependencyUnavailableError, match="stayed locked"):
                    async with other.hold(key):
                        pass
            async with other.hold("third"):  # not in the batch
                pass
        async with other.hold_many(["first", "second"]):  # all released on exit
            pass
        async with other.hold("zeroth"):
            # A batch that cannot take one of its locks keeps none: "second", taken first, is let go.
            with pytest.raises(DependencyUnavailableError, match="zeroth stayed locked"):
                async with batch.hold_many(["zeroth", "second"]):
                    pass
            async with other.hold("second"):
                pass
    finally:
        await connection.aclose()


async def test_a_batch_waits_at_a_busy_lock_holding_those_before_it(
    redis_url: str, clean_redis: object
) -> None:
    connection = aioredis.Redis.from_url(redis_url)
    batch = RedisDocumentLock(connection, lease_seconds=LEASE * 4, wait_seconds=5)
    other = RedisDocumentLock(connection, lease_seconds=LEASE * 4, wait_seconds=0.1)
    held_by_other = asyncio.Event()
    let_go = asyncio.Event()

    async def hold_b() -> None:
        async with other.hold("b"):
            held_by_other.set()
            await let_go.wait()

    holder = asyncio.create_task(hold_b())
    try:
        await held_by_other.wait()
        waiting = asyncio.create_task(_enter_and_leave(batch, ["c", "b", "a"]))
        await asyncio.sleep(0.3)
        # Taken in key order: "a" is held while the batch waits for "b"; "c", after it, is not taken yet.
        assert not waiting.done()
        assert await connection.exists("crawldex:lock:doc:a")
        assert not await connection.exists("crawldex:lock:doc:c")
        let_go.set()
        await asyncio.wait_for(waiting, timeout=5)
        assert not await connection.exists(
            "crawldex:lock:doc:a", "crawldex:lock:doc:b", "crawldex:lock:doc:c"
        )
    finally:
        let_go.set()
        await holder
        await connection.aclose()


async def test_locks_taken_are_renewed_while_the_batch_waits_for_the_rest(
    redis_url: str, clean_redis: object
) -> None:
    """A wait longer than the lease for a busy lock: the locks taken before it do not lapse meanwhile, and
    the batch may write once it holds them all."""
    connection = aioredis.Redis.from_url(redis_url)
    batch = RedisDocumentLock(connection, lease_seconds=LEASE, wait_seconds=10)
    other = RedisDocumentLock(connection, lease_seconds=LEASE, wait_seconds=0.1)
    try:
        async with other.hold("b"):
            waiting = asyncio.create_task(_enter_and_check(batch, ["a", "b"]))
            await asyncio.sleep(LEASE * 3)  # three leases: "a" would have lapsed twice over
            assert not waiting.done()
            assert await connection.pttl("crawldex:lock:doc:a") > 0
        await asyncio.wait_for(waiting, timeout=10)
    finally:
        await connection.aclose()


async def _enter_and_check(lock: RedisDocumentLock, keys: list[str]) -> None:
    async with lock.hold_many(keys) as lease:
        lease.check()


async def _enter_and_leave(lock: RedisDocumentLock, keys: list[str]) -> None:
    async with lock.hold_many(keys):
        pass


async def test_a_lock_lost_to_another_writer_is_left_to_it(
    redis_url: str, clean_redis: object, caplog: pytest.LogCaptureFixture
) -> None:
    connection = aioredis.Redis.from_url(redis_url)
    holder = RedisDocumentLock(connection, lease_seconds=LEASE, wait_seconds=0.1)
    try:
        async with holder.hold_many(["kept", "lost"]) as lease:
            lease.check()
            # As if the lease had lapsed (a stalled holder) and another writer then took the lock.
            await connection.set("crawldex:lock:doc:lost", "another-writer")
            await asyncio.sleep(LEASE)  # a renewal or more: "kept" renewed, "lost" found gone
            assert await connection.pttl("crawldex:lock:doc:kept") > 0
            with pytest.raises(LockLostError, match="lost the lock of document lost to another writer"):
                lease.check()  # the holder's writes left undone are refused
        assert "lost the lock of document lost" in caplog.text
        assert await connection.get("crawldex:lock:doc:lost") == b"another-writer"  # not released by us
        assert not await connection.exists("crawldex:lock:doc:kept")
    finally:
        await connection.aclose()


async def test_a_stalled_holder_refuses_to_write_once_its_lease_may_have_lapsed(
    redis_url: str, clean_redis: object
) -> None:
    """No renewal could run (the holder's event loop blocked, as a stuck call or a paused process would):
    the lease is not known to last, so the holder may not write, whoever holds the lock now."""
    connection = aioredis.Redis.from_url(redis_url)
    holder = RedisDocumentLock(connection, lease_seconds=KILLED_LEASE, wait_seconds=0.1)
    try:
        async with holder.hold("page") as lease:
            await asyncio.sleep(0)  # the renewal task starts waiting for its first turn
            time.sleep(KILLED_LEASE * 0.73)  # noqa: ASYNC251  # the loop blocked past 2/3 of the lease, on purpose
            with pytest.raises(LockLostError, match="last renewed"):
                lease.check()
            # The lock had not expired yet: the renewal due long ago runs now, and writes may go on.
            await asyncio.sleep(0.3)
            lease.check()
    finally:
        await connection.aclose()


async def test_a_killed_holders_lock_frees_itself_within_a_lease(redis_url: str, clean_redis: object) -> None:
    holder = textwrap.dedent(
        f"""
        import asyncio, os, signal
        import redis.asyncio as aioredis
        from crawldex.adapters.redis_lock import LockLostError, RedisDocumentLock

        async def main():
            lock = RedisDocumentLock(aioredis.Redis.from_url({redis_url!r}), lease_seconds={KILLED_LEASE}, wait_seconds=1)
            async with lock.hold("page"):
                print("held", flush=True)
                await asyncio.sleep({KILLED_LEASE / 2})  # renewed at least once (every lease / 3)
                os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", holder, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == -9, stderr.decode()
    assert stdout == b"held\n"
    connection = aioredis.Redis.from_url(redis_url)
    try:
        assert await connection.exists("crawldex:lock:doc:page")  # the dead holder's lock is still there
        lock = RedisDocumentLock(connection, lease_seconds=LEASE, wait_seconds=KILLED_LEASE * 2)
        async with lock.hold("page"):
            pass
    finally:
        await connection.aclose()
