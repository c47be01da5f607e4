"""The asyncio clients' writes, timed in place: no task a command, and redis-py's errors past the timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import TimeoutError as RedisTimeoutError

from crawldex.adapters.redis_client import HeldScript, async_client
from tests.conftest import TEST_REDIS_URL


async def test_commands_with_a_socket_timeout_run_in_the_callers_task() -> None:
    client = async_client(TEST_REDIS_URL, socket_timeout=5)
    loop = asyncio.get_running_loop()
    created: list[str] = []
    previous = loop.get_task_factory()

    def counting_factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any]
    ) -> asyncio.Task[Any]:
        created.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop)

    try:
        await client.ping()  # connected before counting
        loop.set_task_factory(counting_factory)
        await client.set("crawldex:test:write-timed", "value")
        assert await client.get("crawldex:test:write-timed") == b"value"
        await client.delete("crawldex:test:write-timed")
    finally:
        loop.set_task_factory(previous)
        await client.aclose()
    assert created == []  # redis-py's asyncio.wait_for makes one a command on Python 3.11


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never reads: a large enough write fills the buffers and waits."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def _connected_to(port: int, *, socket_timeout: float) -> AbstractConnection:
    """One of `async_client`'s connections to ``port``, connected. RESP2, no client name or driver to announce
    and database 0: connecting sends nothing to be answered."""
    pool = async_client(f"redis://127.0.0.1:{port}/0", socket_timeout=socket_timeout).connection_pool
    connection = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2, "driver_info": None})
    await connection.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    return connection


async def test_a_write_past_the_socket_timeout_raises_redis_timeout_and_closes_the_connection(
    silent_server: int,
) -> None:
    connection = await _connected_to(silent_server, socket_timeout=0.3)
    assert connection.is_connected
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RedisTimeoutError, match="Timeout writing to socket"):
        await connection.send_packed_command(connection.pack_command("SET", "key", b"x" * (64 << 20)))
    assert loop.time() - started < 30  # the 0.3 s timeout, not a hang
    assert not connection.is_connected
    assert connection.socket_timeout == 0.3  # the next command is timed again


async def test_a_write_that_fits_the_buffer_sets_no_timer_and_a_larger_one_is_timed(
    silent_server: int,
) -> None:
    connection = await _connected_to(silent_server, socket_timeout=5)
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def noting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = noting_call_at  # type: ignore[method-assign, assignment]
    try:
        await connection.send_packed_command(connection.pack_command("SET", "key", "small"))
        assert timers == []  # it cannot wait: nothing to time
        # Past the transport's high-water mark (64 KiB): the drain may wait, so the write is timed. The
        # kernel's buffers still take it, so it completes.
        await connection.send_packed_command(connection.pack_command("SET", "key", b"x" * (1 << 17)))
        assert len(timers) == 1
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]
        await connection.disconnect()


# Returns its argument after ~100 ms of busy waiting in Redis: long enough to cancel a caller mid-reply.
SLOW_ECHO = """
local start = redis.call('TIME')
repeat
    local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 100000
return ARGV[1]
"""


@pytest.fixture
async def held_echo() -> AsyncIterator[HeldScript]:
    client = async_client(TEST_REDIS_URL, socket_timeout=5)
    held = HeldScript(client.connection_pool, "return {KEYS[1], ARGV[1]}")
    yield held
    await held.aclose()
    await client.aclose()


async def test_a_held_script_runs_by_its_sha_and_is_loaded_again_after_a_flush(held_echo: HeldScript) -> None:
    assert await held_echo(["k"], ["first"]) == [b"k", b"first"]
    admin = async_client(TEST_REDIS_URL)
    await admin.script_flush()
    await admin.aclose()
    assert await held_echo(["k"], ["after the flush"]) == [b"k", b"after the flush"]


async def test_a_held_script_refuses_a_second_run_while_one_is_out(held_echo: HeldScript) -> None:
    first = asyncio.create_task(held_echo(["k"], ["first"]))
    await asyncio.sleep(0)  # the first run has sent its command and waits for the reply
    with pytest.raises(RuntimeError, match="one call at a time"):
        await held_echo(["k"], ["second"])
    assert await first == [b"k", b"first"]


async def test_a_run_cancelled_before_its_reply_leaves_none_for_the_next() -> None:
    client = async_client(TEST_REDIS_URL, socket_timeout=5)
    held = HeldScript(client.connection_pool, SLOW_ECHO)
    try:
        await held([], ["warm"])  # loaded, so the cancelled run is a plain EVALSHA
        cancelled = asyncio.create_task(held([], ["cancelled"]))
        await asyncio.sleep(0.03)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await held([], ["next"]) == b"next"
    finally:
        await held.aclose()
        await client.aclose()
