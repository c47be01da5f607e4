"""Shared fixtures: real Redis, real PostgreSQL (a fresh database per run), the real model, Qdrant embedded."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hypothesis
import pytest
import redis
from sqlalchemy.engine import make_url

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import Settings
from crawldex.db.migrate import upgrade
from crawldex.services import Services

FIXTURES = Path(__file__).parent / "fixtures"

# Property tests: modest example counts by default, more under HYPOTHESIS_PROFILE=ci (make test).
# No deadline: a slow example is not a failure (no timed assertions).
hypothesis.settings.register_profile("default", max_examples=40, deadline=None)
hypothesis.settings.register_profile("ci", max_examples=300, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

API_TOKEN = "test-api-token"
WEBHOOK_SECRET = "test-webhook-secret"
TEST_REDIS_URL = os.environ.get("CRAWLDEX_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
TEST_ADMIN_DATABASE_URL = os.environ.get(
    "CRAWLDEX_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def fixture_bytes(*parts: str) -> bytes:
    return FIXTURES.joinpath(*parts).read_bytes()


def fixture_json(*parts: str) -> Any:
    return json.loads(fixture_bytes(*parts))


@pytest.fixture(scope="session")
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[redis.Redis]:
    """The test Redis database, emptied before the test."""
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.close()


async def _admin(sql: str, database_url: str = TEST_ADMIN_DATABASE_URL) -> None:
    url = make_url(database_url)
    conn = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A PostgreSQL database created for this test run and dropped after it."""
    name = f"crawldex_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(TEST_ADMIN_DATABASE_URL).set(drivername="postgresql+asyncpg", database=name)
    rendered = url.render_as_string(hide_password=False)
    asyncio.run(upgrade(rendered))
    yield rendered
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def fresh_database(database_url: str) -> str:
    """The test database with empty tables: each test gets a fresh vector store, so the rows must go too."""
    asyncio.run(
        _admin(
            "TRUNCATE documents, crawl_events, operation_metrics, change_events, crawl_pages, "
            "crawl_reconciliations",
            database_url.replace("+asyncpg", ""),
        )
    )
    return database_url


@pytest.fixture(scope="session")
def embedder() -> LocalModelEmbedder:
    """The real in-process model, loaded once per test run."""
    return LocalModelEmbedder.load()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, fresh_database: str, clean_redis: redis.Redis) -> Settings:
    return Settings(
        api_token=API_TOKEN,
        firecrawl_webhook_secret=WEBHOOK_SECRET,
        redis_url=redis_url,
        database_url=fresh_database,
        data_dir=tmp_path / "data",
        qdrant_collection=f"test_{uuid.uuid4().hex[:8]}",
        index_job_retry_intervals=[1],
        # Tests poll and search in tight loops; tests/integration/test_rate_limits.py turns the limiter on.
        rate_limit_enabled=False,
    )


@pytest.fixture
async def services(settings: Settings, embedder: LocalModelEmbedder) -> AsyncIterator[Services]:
    started = await Services.start(settings, embedder=embedder)
    yield started
    await started.aclose()
