"""Pure ASGI middleware: the request body limit, enforced before any handler reads the body; CORS options."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crawldex.telemetry.metrics import WEBHOOKS_REJECTED

WEBHOOK_SOURCES = {"/api/webhook/firecrawl": "firecrawl", "/api/webhook/changedetection": "changedetection"}


class BodyTooLargeError(HTTPException):
    """Raised while the body is read; an HTTPException so FastAPI answers 413, not 'cannot parse body'."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large(max_bytes))


def cors_options(origins: list[str]) -> dict[str, Any]:
    """Starlette's CORSMiddleware for these origins only: no cookies (the API takes bearer tokens), and the
    headers a browser client needs to read (rate limits, Retry-After, the request id)."""
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", "Content-Type", "X-Request-ID"],
        "allow_credentials": False,
        "expose_headers": [
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "RateLimit-Policy",
            "X-Request-ID",
        ],
        "max_age": 600,
    }


def _count_rejected_webhook(scope: Scope) -> None:
    source = WEBHOOK_SOURCES.get(scope.get("path", ""))
    if source is not None:
        WEBHOOKS_REJECTED.labels(source, "body_too_large").inc()


def _too_large(max_bytes: int) -> str:
    return f"request body exceeds the limit of {max_bytes} bytes (CRAWLDEX_MAX_BODY_BYTES)"


class BodySizeLimit:
    """Answers 413 for a body over ``max_bytes``, whether or not Content-Length announces it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, 400, "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    _count_rejected_webhook(scope)
                    await self._reject(send, 413, _too_large(self.max_bytes))
                    return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    _count_rejected_webhook(scope)
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if not response_started:
                await self._reject(send, 413, _too_large(self.max_bytes))

    @staticmethod
    async def _reject(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
