"""asyncio Redis clients whose commands hiredis packs, as redis-py's synchronous clients already are.

redis-py packs an asyncio connection's commands in Python even with hiredis installed (redis/redis-py#4176;
its synchronous connections use `hiredis.pack_command`). That costs about 1.2 us an argument, and an
enqueue script run carries some 45 arguments a page: about 55 us of the API's CPU a webhook, against 6 with
hiredis. `_HiredisPacking` can go once redis-py packs asyncio commands with hiredis itself.
"""

from __future__ import annotations

import codecs
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError
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


class _Connection(_HiredisPacking, aioredis.Connection):
    """redis://: TCP."""


class _SSLConnection(_HiredisPacking, aioredis.SSLConnection):
    """rediss://: TLS over TCP."""


class _UnixDomainSocketConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    """unix://: a Unix domain socket."""


_PACKED_BY_HIREDIS: dict[type[AbstractConnection], type[AbstractConnection]] = {
    aioredis.Connection: _Connection,
    aioredis.SSLConnection: _SSLConnection,
    aioredis.UnixDomainSocketConnection: _UnixDomainSocketConnection,
}


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """`redis.asyncio.Redis.from_url(url, **options)`, its connections packing commands with hiredis.

    The URL chooses the connection class (redis://, rediss://, unix://), so the class is swapped in the pool
    that URL made rather than passed in, which the URL's own choice would override. hiredis writes str as
    strict UTF-8: a client asked for another encoding keeps redis-py's packer.
    """
    pool = aioredis.ConnectionPool.from_url(url, **options)
    settings = pool.connection_kwargs
    if (
        codecs.lookup(settings.get("encoding", "utf-8")).name == "utf-8"
        and settings.get("encoding_errors", "strict") == "strict"
    ):
        pool.connection_class = _PACKED_BY_HIREDIS.get(pool.connection_class, pool.connection_class)
    return aioredis.Redis.from_pool(pool)
