"""The asyncio clients' hiredis packing: the bytes redis-py's own packer writes, its errors, its URL schemes."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from crawldex.adapters.redis_client import async_client


class Status(str, enum.Enum):  # noqa: UP042 (RQ's JobStatus is such an enum, sent as a job hash field)
    QUEUED = "queued"


ARGUMENT_LISTS: list[tuple[Any, ...]] = [
    ("SET", "key", "value"),
    ("CONFIG GET", "maxmemory"),  # a command name with its subcommand
    (b"CLIENT SETNAME", b"crawldex"),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", 0, -7, 2**70, 1.5, 1e-300, float("inf")),
    ("HSET", "h", "status", Status.QUEUED, "data", b"\x78\x9c\x00\xff", "empty", "", "text", "naïve ☃"),
    ("RPUSH", "q", bytearray(b"ba"), memoryview(b"mv")),
    ("SET", "big", "x" * 10_000),  # past redis-py's buffer cutoff, where its packer splits the output
]


def _our_connection() -> aioredis.connection.AbstractConnection:
    pool = async_client("redis://127.0.0.1:1/0").connection_pool
    return pool.connection_class(**pool.connection_kwargs)  # not connected: packing needs no server


def _packed(connection: aioredis.connection.AbstractConnection, args: tuple[Any, ...]) -> bytes:
    return b"".join(bytes(part) for part in connection.pack_command(*args))


@pytest.mark.parametrize("args", ARGUMENT_LISTS, ids=lambda args: str(args[0]))
def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    ours = _our_connection()
    assert ours.pack_command.__module__ == "crawldex.adapters.redis_client"
    assert _packed(ours, args) == _packed(aioredis.Connection(), args)


@pytest.mark.parametrize("value", [None, True, object()], ids=["None", "bool", "object"])
def test_a_value_redis_py_refuses_is_refused_with_its_data_error(value: Any) -> None:
    ours = _our_connection()
    with pytest.raises(DataError):
        aioredis.Connection().pack_command("SET", "key", value)
    with pytest.raises(DataError):
        ours.pack_command("SET", "key", value)


@pytest.mark.parametrize(
    ("url", "redis_py_class"),
    [
        ("redis://127.0.0.1:6379/3", aioredis.Connection),
        ("rediss://127.0.0.1:6380/0", aioredis.SSLConnection),
        ("unix:///run/redis.sock?db=2", aioredis.UnixDomainSocketConnection),
    ],
)
def test_each_url_scheme_keeps_its_connection_class_and_options(url: str, redis_py_class: type) -> None:
    client = async_client(url, socket_timeout=7)
    pool = client.connection_pool
    assert issubclass(pool.connection_class, redis_py_class)
    assert pool.connection_class is not redis_py_class
    assert pool.connection_kwargs["socket_timeout"] == 7
    assert pool.connection_kwargs["db"] == aioredis.ConnectionPool.from_url(url).connection_kwargs["db"]
    assert client.auto_close_connection_pool  # closing the client closes the pool it made


@pytest.mark.parametrize(
    ("options", "packed_by_hiredis"),
    [
        ({}, True),
        ({"encoding": "UTF8"}, True),
        ({"encoding": "latin-1"}, False),  # hiredis writes str as UTF-8 only
        ({"encoding_errors": "replace"}, False),
    ],
)
def test_only_a_client_encoding_str_as_strict_utf8_gets_hiredis_packing(
    options: dict[str, str], packed_by_hiredis: bool
) -> None:
    connection_class = async_client("redis://127.0.0.1:6379/0", **options).connection_pool.connection_class
    assert (connection_class is not aioredis.Connection) is packed_by_hiredis


class _WriterOf:
    """What `_write_cannot_wait` reads of a connection's stream writer: its transport."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport


class _Buffered(asyncio.WriteTransport):
    def __init__(self, buffered: int, limits: tuple[int, int] = (16 * 1024, 64 * 1024)) -> None:
        super().__init__()
        self._buffered, self._limits = buffered, limits

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._limits


@pytest.mark.parametrize(
    ("transport", "command", "untimed"),
    [
        (_Buffered(0), [b"x" * 100], True),
        (_Buffered(0), b"x" * 100, True),
        (_Buffered(0), [b"x" * (64 * 1024 + 1)], False),  # past the high-water mark: the drain may wait
        (_Buffered(20 * 1024), [b"x" * 100], False),  # over the low-water mark: writing may be paused
        (_Buffered(0), iter([b"x"]), False),  # not a packed list: its size is not read
        (asyncio.WriteTransport(), [b"x"], False),  # a transport that says nothing of its buffer
    ],
    ids=["small", "bytes", "past-high-water", "over-low-water", "iterator", "silent-transport"],
)
def test_only_a_write_that_cannot_wait_goes_untimed(
    transport: asyncio.WriteTransport, command: Any, untimed: bool
) -> None:
    connection = _our_connection()
    connection._writer = _WriterOf(transport)  # type: ignore[assignment]  # only its transport is read
    try:
        assert connection._write_cannot_wait(command) is untimed  # type: ignore[attr-defined]
    finally:
        connection._writer = None  # the connection's finaliser would close the stand-in


def test_an_unconnected_connection_times_its_write() -> None:
    assert _our_connection()._write_cannot_wait([b"x"]) is False  # type: ignore[attr-defined]
