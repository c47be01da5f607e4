"""The ingest benchmark's limit: a bare FastAPI endpoint doing one Redis write, served like ingest-api
(uvicorn.run, one process). `python -m benchmarks.bare_app PORT REDIS_URL`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app(redis_url: str) -> FastAPI:
    connection = aioredis.Redis.from_url(redis_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await connection.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/bare")
    async def bare(request: Request) -> JSONResponse:
        body = await request.body()
        await connection.rpush("bench:bare", body[:64])
        return JSONResponse({"status": "queued"}, status_code=202)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(create_app(redis_url), host="127.0.0.1", port=port, log_config=None, log_level="warning")


if __name__ == "__main__":
    main()
