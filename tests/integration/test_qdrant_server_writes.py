"""Writes to a Qdrant server, through qdrant-client over real HTTP, against a server that speaks Qdrant's
REST contract for a batch update (`POST /collections/{name}/points/batch`) and refuses a body over its
`service.max_request_size_mb` as Qdrant does (400, "JSON payload (N bytes) is larger than allowed (limit:
M bytes)."). A Qdrant server cannot run here; its own tests cover the rest of the API."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pytest

from crawldex.adapters.qdrant import DOC_ID, IndexedPoint, VectorStore
from crawldex.adapters.redis_lock import LockLostError
from crawldex.errors import DependencyUnavailableError
from crawldex.keyword import SparseVector
from tests.local_http import QuietHandler, serve

COLLECTION = "pages"


@dataclass
class BatchServer:
    url: str
    max_request_bytes: int
    bodies: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    # qdrant-client asks for the server's version on a thread of its own when it connects.
    version_asked: threading.Event = field(default_factory=threading.Event)


@contextmanager
def qdrant_batch_server(max_request_bytes: int) -> Iterator[BatchServer]:
    server_state = BatchServer(url="", max_request_bytes=max_request_bytes)

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            # The root answers the server's version, which qdrant-client checks against its own.
            version = {"title": "qdrant - vector search engine", "version": metadata.version("qdrant-client")}
            self.send_json(200 if self.path == "/" else 404, version)
            server_state.version_asked.set()

        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            body = self.rfile.read(length)
            if not self.path.startswith(f"/collections/{COLLECTION}/points/batch"):
                self.send_json(404, {"status": {"error": "Not found"}, "time": 0.0})
            elif length > server_state.max_request_bytes:
                server_state.refused.append(length)
                message = (
                    f"JSON payload ({length} bytes) is larger than allowed "
                    f"(limit: {server_state.max_request_bytes} bytes)."
                )
                self.send_json(400, {"result": None, "status": {"error": message}, "time": 0.0})
            else:
                request = json.loads(body)
                server_state.bodies.append(request)
                server_state.sizes.append(length)
                results = [
                    {"operation_id": position, "status": "completed"}
                    for position, _ in enumerate(request["operations"])
                ]
                self.send_json(200, {"result": results, "status": "ok", "time": 0.001})

    with serve(Handler) as url:
        server_state.url = url
        try:
            yield server_state
        finally:
            server_state.version_asked.wait(10)


def page_points(doc_id: uuid.UUID, chunks: int) -> list[IndexedPoint]:
    """A page's points as the pipeline makes them: a 384-dimension vector, ~100 keyword terms and the
    chunk's text (~1,500 characters) in the payload."""
    return [
        IndexedPoint(
            id=uuid.uuid5(doc_id, str(index)),
            dense=[((index * 7 + d) % 97) / 97 - 0.5 for d in range(384)],
            keyword=SparseVector(indices=list(range(index, index + 100)), values=[0.123456] * 100),
            payload={DOC_ID: str(doc_id), "chunk_index": index, "text": f"chunk {index} " + "prose " * 250},
        )
        for index in range(chunks)
    ]


def server_store(server: BatchServer, max_request_bytes: int | None = None) -> VectorStore:
    if max_request_bytes is None:
        return VectorStore.open(url=server.url, api_key=None, path="", collection=COLLECTION)
    return VectorStore.open(
        url=server.url, api_key=None, path="", collection=COLLECTION, max_request_bytes=max_request_bytes
    )


def upserted_ids(body: dict[str, Any]) -> list[str]:
    return [
        point["id"]
        for operation in body["operations"]
        if "upsert" in operation
        for point in operation["upsert"]["points"]
    ]


async def test_a_batch_of_pages_is_one_request_its_stale_tails_deleted_after_its_chunks() -> None:
    doc_id = uuid.uuid4()
    points = page_points(doc_id, 20)
    with qdrant_batch_server(32 * 2**20) as server:
        await server_store(server).write_chunks(points, [(doc_id, 20)])
    assert len(server.bodies) == 1
    operations = server.bodies[0]["operations"]
    assert [next(iter(operation)) for operation in operations] == ["upsert", "delete"]
    assert upserted_ids(server.bodies[0]) == [str(point.id) for point in points]


async def test_a_write_larger_than_the_request_bound_goes_in_several_requests_the_deletion_last() -> None:
    doc_id = uuid.uuid4()
    points = page_points(doc_id, 120)  # ~1.3 MB of JSON
    with qdrant_batch_server(512 * 1024) as server:
        await server_store(server, max_request_bytes=384 * 1024).write_chunks(points, [(doc_id, 120)])
    assert server.refused == []
    assert len(server.bodies) > 2
    assert all(size <= 384 * 1024 for size in server.sizes)
    # In order, each point once; the stale tail deleted in the last request, after its upsert.
    assert [point_id for body in server.bodies for point_id in upserted_ids(body)] == [
        str(point.id) for point in points
    ]
    kinds = [[next(iter(operation)) for operation in body["operations"]] for body in server.bodies]
    assert kinds[:-1] == [["upsert"]] * (len(kinds) - 1)
    assert kinds[-1] == ["upsert", "delete"]


async def test_a_full_batch_of_pages_is_one_request() -> None:
    """8 pages of 100 chunks: over a million characters of text, CRAWLDEX_INDEX_BATCH_MAX_CHARS's default."""
    documents = [uuid.uuid4() for _ in range(8)]
    points = [point for doc_id in documents for point in page_points(doc_id, 100)]
    with qdrant_batch_server(32 * 2**20) as server:
        await server_store(server).write_chunks(points, [(doc_id, 100) for doc_id in documents])
    assert len(server.bodies) == 1
    assert sum(len(point.payload["text"]) for point in points) > 1_000_000


async def test_a_write_in_several_requests_stops_where_its_check_fails() -> None:
    """The pipeline passes its document locks' check: a write that outlived them sends nothing more."""
    doc_id = uuid.uuid4()
    checks: list[int] = []

    def check() -> None:
        checks.append(len(server.bodies))
        if len(checks) == 2:
            raise LockLostError("the document locks were last renewed 31.0s ago (lease 30s); not writing")

    with qdrant_batch_server(512 * 1024) as server:
        store = server_store(server, max_request_bytes=384 * 1024)
        with pytest.raises(LockLostError):
            await store.write_chunks(page_points(doc_id, 120), [(doc_id, 120)], check=check)
    assert checks == [1, 2]  # before the second request and the third, none before the first
    assert len(server.bodies) == 2
    assert all("delete" not in operation for body in server.bodies for operation in body["operations"])


async def test_a_deletion_alone_is_one_request() -> None:
    doc_id = uuid.uuid4()
    with qdrant_batch_server(512 * 1024) as server:
        await server_store(server, max_request_bytes=384 * 1024).delete_chunks_from(doc_id, 3)
    assert [[next(iter(operation)) for operation in body["operations"]] for body in server.bodies] == [
        ["delete"]
    ]


@pytest.mark.parametrize("chunks", [1, 400])
async def test_the_default_bound_keeps_a_large_page_under_qdrants_default_limit(chunks: int) -> None:
    """~4,000 chunks is a page of ~3 million characters: ~45 MB of points, over Qdrant's default 32 MiB."""
    doc_id = uuid.uuid4()
    points = page_points(doc_id, chunks * 10)
    with qdrant_batch_server(32 * 2**20) as server:
        await server_store(server).write_chunks(points, [(doc_id, len(points))])
    assert server.refused == []
    assert sum(len(upserted_ids(body)) for body in server.bodies) == len(points)


async def test_one_request_for_a_page_that_large_is_refused_by_the_server() -> None:
    """What the bound prevents: the page above as one request, as writes were sent before it."""
    doc_id = uuid.uuid4()
    points = page_points(doc_id, 4000)
    with qdrant_batch_server(32 * 2**20) as server:
        store = server_store(server, max_request_bytes=2**40)
        with pytest.raises(DependencyUnavailableError, match="larger than allowed"):
            await store.write_chunks(points, [(doc_id, len(points))])
    assert len(server.refused) == 1
    assert server.refused[0] > 32 * 2**20
