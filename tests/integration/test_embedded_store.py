"""The embedded store's SQLite file: switched to write-ahead logging, and every write still there after a
reopen (real qdrant-client local mode)."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from crawldex.adapters.qdrant import IndexedPoint, PointFilter, VectorStore, _use_write_ahead_log
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


def test_a_storage_file_that_is_not_there_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        _use_write_ahead_log(tmp_path / "collection" / "pages" / "storage.sqlite")
    assert "journal mode is left as it is" in caplog.text
    assert not (tmp_path / "collection").exists()
