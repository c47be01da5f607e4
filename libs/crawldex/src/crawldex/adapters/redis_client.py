"""asyncio Redis clients for the API's hot path: commands packed by hiredis, writes timed without a task, and a
script run on a connection held for it (`HeldScript`).

redis-py packs an asyncio connection's commands in Python even with hiredis installed (redis/redis-py#4176;
its synchronous connections use `hiredis.pack_command`). That costs about 1.2 us an argument, and an
enqueue script run carries some 45 arguments a page: about 55 us of the API's CPU a webhook, against 6 with
hiredis. `_HiredisPacking` can go once redis-py packs asyncio commands with hiredis itself.

With a ``socket_timeout``, redis-py times each command's write with `asyncio.wait_for`, which on Python 3.11
(the images' version) runs the write in a task of its own; `_WriteTimedInPlace` times it with
`asyncio.timeout` instead, and can go with Python 3.11 (3.12's `wait_for` is `asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT


class _HiredisPacking(AbstractConnection):
    """Mixed in before an asyncio connection class: `pack_command` as redis-py's `HiredisRespSerializer`.

    Same bytes as redis-py's own packer for what it accepts (str as UTF-8, bytes, int, float), and the same
    `DataError` for what it refuses; `async_client` uses it only for clients that encode str as strict UTF-8.
    """

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        name = args[0]
        # A command name may hold its subcommand ("CONFIG GET"): Redis takes them as separate arguments.
        if isinstance(name, str):
            args = (*name.encode().split(), *args[1:])
        elif isinstance(name, bytes) and b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]  # type: ignore[arg-type]  # its stub: a tuple of one
        except TypeError:
            # hiredis refuses a bytearray: converted only now, since scanning every argument first cost more
            # than the pack itself.
            packable = tuple(bytes(arg) if isinstance(arg, bytearray) else arg for arg in args)
            try:
                return [hiredis.pack_command(packable)]  # type: ignore[arg-type]
            except TypeError as exc:  # hiredis refuses None, bool and other types, as redis-py's encoder does
                raise DataError(str(exc)) from exc


class _WriteTimedInPlace(AbstractConnection):
    """Mixed in before an asyncio connection class: a command's write timed by `asyncio.timeout`.

    redis-py's `asyncio.wait_for` costs a task, a timer and two more turns of the event loop a command on
    Python 3.11 (2.7 % of a webhook's instructions). The write is still redis-py's, with its handling of a
    failed one (the connection closed); a write past ``socket_timeout`` raises redis-py's `TimeoutError`.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        timeout = self.socket_timeout
        if not timeout:
            await super().send_packed_command(command, check_health)
            return
        # Connecting and the health check keep their own timeouts; only the write is timed here.
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        # Without a timeout redis-py writes in place. A pool lends a connection to one command at a time, so
        # nothing else reads the attribute meanwhile.
        self.socket_timeout = None
        try:
            if self._write_cannot_wait(command):
                await super().send_packed_command(command, check_health=False)
                return
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health=False)
        except TimeoutError:
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout

    def _write_cannot_wait(self, command: bytes | str | Iterable[bytes]) -> bool:
        """Whether writing ``command`` leaves the transport's buffer under its high-water mark, the buffer being
        at or under its low-water mark now (so writing is not paused): then the write and its drain return
        without waiting on the socket, and a timeout (a timer set and cancelled) has nothing to time. Commands
        are packed as a list of bytes; anything else is timed."""
        if isinstance(command, bytes | str):
            size = len(command)
        elif isinstance(command, list):
            size = sum(len(part) for part in command)
        else:
            return False
        if self._writer is None:
            return False
        transport = self._writer.transport
        try:
            if transport.is_closing():
                return False
            buffered = transport.get_write_buffer_size()
            low_water, high_water = transport.get_write_buffer_limits()
        except NotImplementedError:  # asyncio's base transports say nothing: the write is timed
            return False
        return bool(buffered <= low_water and buffered + size <= high_water)


class _Connection(_HiredisPacking, _WriteTimedInPlace, aioredis.Connection):
    """redis://: TCP."""


class _SSLConnection(_HiredisPacking, _WriteTimedInPlace, aioredis.SSLConnection):
    """rediss://: TLS over TCP."""


class _UnixDomainSocketConnection(_HiredisPacking, _WriteTimedInPlace, aioredis.UnixDomainSocketConnection):
    """unix://: a Unix domain socket."""


_PACKED_BY_HIREDIS: dict[type[AbstractConnection], type[AbstractConnection]] = {
    aioredis.Connection: _Connection,
    aioredis.SSLConnection: _SSLConnection,
    aioredis.UnixDomainSocketConnection: _UnixDomainSocketConnection,
}


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """`redis.asyncio.Redis.from_url(url, **options)`, its connections packing commands with hiredis and
    timing writes in place.

    The URL chooses the connection class (redis://, rediss://, unix://), so the class is swapped in the pool
    that URL made rather than passed in, which the URL's own choice would override. hiredis writes str as
    strict UTF-8: a client asked for another encoding keeps redis-py's connection classes.
    """
    pool = aioredis.ConnectionPool.from_url(url, **options)
    settings = pool.connection_kwargs
    if (
        codecs.lookup(settings.get("encoding", "utf-8")).name == "utf-8"
        and settings.get("encoding_errors", "strict") == "strict"
    ):
        pool.connection_class = _PACKED_BY_HIREDIS.get(pool.connection_class, pool.connection_class)
    return aioredis.Redis.from_pool(pool)


class HeldScript:
    """A Lua script run on one connection of ``pool`` held for good, through that connection's own
    ``send_command`` and ``read_response``, for a caller with one run out at a time (the enqueue's group
    commit; a second run while one is out is refused, as replies would mix).

    The client's call around those two steps (for a single-connection client: its lock and its
    re-initialisation on every call, the retry wrapper, the observability hooks) cost ~25 µs of CPU a run,
    in process one run at a time: 83 µs a call against 59 this way (a pooled client's call, which also leases
    and checks a connection, 90). Like the client, it sends the script by its SHA and loads it when Redis
    answers NOSCRIPT. A run whose connection Redis dropped (a restart, a failover, a proxy's idle timeout) is
    sent once more on a new connection: the pool's readiness check noticed a dropped idle connection before
    a lease. redis-py's connection closes itself on a failure or a cancellation mid-command, so no reply is
    left unread for the next run; a timeout is not retried.
    """

    def __init__(self, pool: aioredis.ConnectionPool, script: str) -> None:
        self._pool = pool
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._connection: AbstractConnection | None = None
        self._running = False

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self._running:
            raise RuntimeError("HeldScript runs one call at a time")
        self._running = True
        try:
            try:
                return await self._run(keys, args)
            except RedisConnectionError:
                return await self._run(keys, args)
        finally:
            self._running = False

    async def _run(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        connection = self._connection
        if connection is None:
            connection = self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await self._evalsha(connection, keys, args)
        except NoScriptError:  # Redis restarted or its scripts were flushed
            await connection.send_command("SCRIPT", "LOAD", self._script)
            await connection.read_response()
            return await self._evalsha(connection, keys, args)

    async def _evalsha(self, connection: AbstractConnection, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        await connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
        return await connection.read_response()

    async def aclose(self) -> None:
        """Give the connection back to its pool (whose owner closes it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)
