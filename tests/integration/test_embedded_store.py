"""The embedded store's SQLite file: switched to write-ahead logging, one commit a write, and every write
still there after a reopen (real qdrant-client local mode)."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from crawldex.adapters.qdrant import (
    IndexedPoint,
    PointFilter,
    VectorStore,
    _persistence,
    _use_write_ahead_log,
)
from crawldex.errors import DependencyUnavailableError
from crawldex.keyword import BM25Encoder

DIMENSION = 4
BM25 = BM25Encoder()


def _journal_mode(storage: Path) -> str:
    with closing(sqlite3.connect(storage)) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


def _points(doc_id: uuid.UUID, texts: list[str]) -> list[IndexedPoint]:
    return [
        IndexedPoint(
            id=uuid.uuid5(doc_id, str(n)),
            dense=[1.0, float(n), 0.5, 0.0],
            keyword=BM25.encode_document(text),
            payload={"doc_id": str(doc_id), "chunk_index": n, "text": text},
        )
        for n, text in enumerate(texts)
    ]


async def _open(path: Path) -> VectorStore:
    store = VectorStore.open(url=None, api_key=None, path=str(path), collection="pages")
    await store.ensure_collection(DIMENSION)
    return store


async def test_the_collection_file_is_in_wal_mode_and_keeps_every_write(tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    storage = path / "collection" / "pages" / "storage.sqlite"
    store = await _open(path)
    doc = uuid.uuid4()
    try:
        assert _journal_mode(storage) == "wal"
        await store.upsert(_points(doc, ["redis lists hold jobs", "workers scale on queue length", "third"]))
        await store.delete_chunks_from(doc, 2)
        await store.set_document_payload(doc, {"title": "Queues"})
    finally:
        store.close()
    reopened = await _open(path)
    try:
        assert _journal_mode(storage) == "wal"
        assert await reopened.count() == 2
        _, hits = await reopened.search(
            dense=None, keyword=BM25.encode_query("queue workers"), point_filter=PointFilter(), limit=5
        )
        assert [hit.payload["chunk_index"] for hit in hits] == [1]
        assert hits[0].payload["title"] == "Queues"
    finally:
        reopened.close()


@pytest.mark.parametrize(
    "by_filter", [False, True], ids=["ids-from-local-index", "filter-as-sent-to-a-server"]
)
async def test_a_batchs_stale_tails_go_in_one_write(tmp_path: Path, by_filter: bool) -> None:
    store = await _open(tmp_path / "qdrant")
    docs = [uuid.uuid4() for _ in range(4)]
    try:
        for doc in docs:
            await store.upsert(_points(doc, ["first chunk", "second chunk", "third chunk"]))
        if by_filter:  # as against a Qdrant server: the filter goes to qdrant-client, which evaluates it
            store._local, store._local_wanted = None, False
        # Keep 1, 2, 0 and all 3 chunks of the four documents; one nested filter or one id list.
        await store.delete_stale_chunks([(docs[0], 1), (docs[1], 2), (docs[2], 0), (docs[3], 3)])
        kept = [await store.count(doc) for doc in docs]
        assert kept == [1, 2, 0, 3]
        await store.delete_stale_chunks([])
        assert await store.count() == 6
    finally:
        store.close()


@pytest.mark.parametrize(
    "by_filter", [False, True], ids=["ids-from-local-index", "filter-as-sent-to-a-server"]
)
async def test_a_page_reindexed_into_fewer_chunks_is_one_write(tmp_path: Path, by_filter: bool) -> None:
    store = await _open(tmp_path / "qdrant")
    doc, other = uuid.uuid4(), uuid.uuid4()
    persistence = _persistence(store._client, "pages")
    assert persistence is not None
    statements: list[str] = []
    try:
        await store.upsert(_points(doc, ["old one", "old two", "old three", "old four"]))
        await store.upsert(_points(other, ["another page"]))
        if by_filter:
            store._local, store._local_wanted = None, False
        persistence.storage.set_trace_callback(statements.append)

        await store.write_chunks(_points(doc, ["new one about queues", "new two"]), [(doc, 2), (other, 1)])

        assert [s for s in statements if s.strip().upper() == "COMMIT"] == ["COMMIT"]
        assert (await store.count(doc), await store.count(other)) == (2, 1)
        _, hits = await store.search(
            dense=None, keyword=BM25.encode_query("queues"), point_filter=PointFilter(), limit=5
        )
        assert [(hit.payload["chunk_index"], hit.payload["text"]) for hit in hits] == [
            (0, "new one about queues")
        ]
    finally:
        store.close()


async def test_a_write_whose_points_lie_in_their_own_stale_tail_is_refused(tmp_path: Path) -> None:
    store = await _open(tmp_path / "qdrant")
    doc = uuid.uuid4()
    try:
        await store.upsert(_points(doc, ["old one", "old two"]))
        with pytest.raises(ValueError, match="stale tail"):
            await store.write_chunks(_points(doc, ["one", "two", "three", "four"]), [(doc, 2)])
        assert await store.count(doc) == 2
        _, hits = await store.search(
            dense=None, keyword=BM25.encode_query("old"), point_filter=PointFilter(), limit=5
        )
        assert len(hits) == 2
    finally:
        store.close()


def _stored_rows(storage: Path) -> int:
    """Points committed to the file, as another connection (another process) sees them."""
    with closing(sqlite3.connect(storage)) as connection:
        return int(connection.execute("SELECT count(*) FROM points").fetchone()[0])


async def test_a_write_of_many_points_commits_once(tmp_path: Path) -> None:
    store = await _open(tmp_path / "qdrant")
    storage = tmp_path / "qdrant" / "collection" / "pages" / "storage.sqlite"
    persistence = _persistence(store._client, "pages")
    assert persistence is not None
    statements: list[str] = []
    persistence.storage.set_trace_callback(statements.append)
    doc = uuid.uuid4()
    try:
        await store.upsert(_points(doc, [f"chunk {n} about queues" for n in range(8)]))
        await store.delete_chunks_from(doc, 3)
        commits = [s for s in statements if s.strip().upper() == "COMMIT"]
        inserts = [s for s in statements if s.startswith("INSERT")]
        assert (len(inserts), len(commits)) == (8, 2)  # the upsert's 8 points, then the delete's 5 points
        assert _stored_rows(storage) == 3
    finally:
        store.close()


async def test_a_write_that_sqlite_refuses_leaves_no_transaction_open(tmp_path: Path) -> None:
    store = await _open(tmp_path / "qdrant")
    storage = tmp_path / "qdrant" / "collection" / "pages" / "storage.sqlite"
    persistence = _persistence(store._client, "pages")
    assert persistence is not None
    connection = persistence.storage
    try:
        await store.upsert(_points(uuid.uuid4(), ["kept before"]))
        connection.execute("PRAGMA query_only = ON")  # every write now fails inside SQLite
        with pytest.raises(DependencyUnavailableError, match="readonly"):
            await store.upsert(_points(uuid.uuid4(), ["refused one", "refused two"]))
        assert persistence.storage is connection
        assert not connection.in_transaction
        connection.execute("PRAGMA query_only = OFF")
        await store.upsert(_points(uuid.uuid4(), ["written after", "and its second chunk"]))
        assert await store.count() == 3
        assert _stored_rows(storage) == 3
    finally:
        store.close()
    reopened = await _open(tmp_path / "qdrant")
    try:
        assert await reopened.count() == 3
    finally:
        reopened.close()


_THIRD_POINT = (
    "CREATE TEMP TRIGGER third_point BEFORE INSERT ON points WHEN (SELECT count(*) FROM points) >= 2 "
)
THIRD_POINT_FAILS = {
    "ABORT": _THIRD_POINT + "BEGIN SELECT RAISE(ABORT, 'no room for a third point'); END",
    "ROLLBACK": _THIRD_POINT + "BEGIN SELECT RAISE(ROLLBACK, 'no room for a third point'); END",
}


def _refuse_commits(action: int, name: str | None, *_: object) -> int:
    """An SQLite authorizer refusing COMMIT, as a full disk or an I/O error can fail it."""
    if action == sqlite3.SQLITE_TRANSACTION and name == "COMMIT":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


async def test_a_refused_commit_leaves_memory_as_the_file_has_it(tmp_path: Path) -> None:
    store = await _open(tmp_path / "qdrant")
    doc = uuid.uuid4()
    try:
        await store.upsert(_points(doc, ["first", "second", "third", "fourth"]))
        persistence = _persistence(store._client, "pages")
        assert persistence is not None
        persistence.storage.set_authorizer(_refuse_commits)
        with pytest.raises(DependencyUnavailableError):
            await store.delete_chunks_from(doc, 1)
        assert await store.count(doc) == 4  # as on disk: not the 1 that memory held before the commit
        await store.delete_chunks_from(doc, 1)  # the job's retry
        assert await store.count(doc) == 1
    finally:
        store.close()
    reopened = await _open(tmp_path / "qdrant")
    try:
        assert await reopened.count(doc) == 1
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("sqlite_raise", "kept"),
    [("ABORT", 2), ("ROLLBACK", 0)],
    ids=["point-refused-earlier-kept", "transaction-rolled-back-by-sqlite"],
)
async def test_a_write_that_fails_part_way_leaves_memory_as_the_file_has_it(
    tmp_path: Path, sqlite_raise: str, kept: int
) -> None:
    store = await _open(tmp_path / "qdrant")
    doc = uuid.uuid4()
    try:
        persistence = _persistence(store._client, "pages")
        assert persistence is not None
        # The third point's INSERT fails: ABORT undoes that statement, ROLLBACK the whole transaction.
        persistence.storage.execute(THIRD_POINT_FAILS[sqlite_raise])
        with pytest.raises(DependencyUnavailableError, match="no room"):
            await store.upsert(_points(doc, ["one", "two", "three", "four", "five"]))
        assert await store.count(doc) == kept
    finally:
        store.close()
    reopened = await _open(tmp_path / "qdrant")
    try:
        assert await reopened.count(doc) == kept
        await reopened.upsert(_points(doc, ["one", "two", "three", "four", "five"]))
        assert await reopened.count(doc) == 5
    finally:
        reopened.close()


def test_a_storage_file_that_is_not_there_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        _use_write_ahead_log(tmp_path / "collection" / "pages" / "storage.sqlite")
    assert "journal mode is left as it is" in caplog.text
    assert not (tmp_path / "collection").exists()
