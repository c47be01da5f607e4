"""Per-request telemetry: request id, Prometheus HTTP metrics by route template, log context.

The server span of each request is FastAPI's own (its native OpenTelemetry support, which also
continues an incoming `traceparent`); see `create_app`.
"""

from __future__ import annotations

import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crawldex.logs import log_context
from crawldex.telemetry.metrics import HTTP_DURATION, HTTP_REQUESTS, series

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # never the raw path: a label must not take values a client chooses


class RequestTelemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        incoming = headers.get(REQUEST_ID_HEADER, b"")
        # 32 random hex digits, as uuid4().hex gives but for a third of its cost: nothing reads it as a UUID.
        request_id = incoming.decode() if _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(16)
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        status_code = 500
        started = time.perf_counter()

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_request_id)
            finally:
                route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
                series(HTTP_REQUESTS, route, method, str(status_code)).inc()
                series(HTTP_DURATION, route, method).observe(time.perf_counter() - started)
