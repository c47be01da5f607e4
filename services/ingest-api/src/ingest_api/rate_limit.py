"""Rate limits of /api/* as pure ASGI middleware; the counting is the core's `RedisRateLimiter` (GCRA).

Two limits, each with a bucket per client in Redis (shared by every replica):

- ``api``: every /api/* route but the webhooks. The client is the API token when the request carries the
  right one (all holders of CRAWLDEX_API_TOKEN share one budget), else the client address: a wrong or
  made-up token is counted by address, so changing it does not buy a fresh bucket.
- ``webhook``: /api/webhook/*, by sender address, with its own (higher) limit; the API limit never applies.
  The Firecrawl webhook counts its request in the Redis script that queues the delivery's jobs (one round
  trip for both, a fifth of a webhook's CPU saved; `DeferredCharge`), after the signature is checked; every
  answer that queues nothing (or that the route never makes, as the body limit's 413) counts it on its
  own, so every delivery counts all the same.

/health, /livez, /readyz, /metrics and the OpenAPI pages are outside /api/ and never limited. A refused
request gets 429 with ``Retry-After``; every limited route's answer carries ``RateLimit-Limit``,
``RateLimit-Remaining``, ``RateLimit-Reset`` and ``RateLimit-Policy``.

If Redis does not answer, requests go through unchecked (fail open), counted in
``crawldex_rate_limit_fail_open_total`` and logged once a minute: a limiter must not turn a Redis outage into
errors. The routes that need Redis themselves (enqueueing) answer 503 with Retry-After on their own; a
Firecrawl delivery of pages, counted with its jobs, gets that 503 (nothing is let through unchecked).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crawldex.adapters.rate_limit import RateCharge, RateDecision, RateLimit, RedisRateLimiter, bucket_key
from crawldex.config import Settings
from crawldex.errors import DependencyUnavailableError
from crawldex.telemetry.metrics import RATE_LIMIT_FAIL_OPEN, RATE_LIMITED, WEBHOOKS_REJECTED
from ingest_api.middleware import WEBHOOK_SOURCES

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
WEBHOOK_PREFIX = "/api/webhook/"
API, WEBHOOK = "api", "webhook"
FAIL_OPEN_LOG_INTERVAL_SECONDS = 60.0
# Routes that count their request with their own Redis work (see `DeferredCharge`), and where they find it.
DEFERRED_PATHS = frozenset({"/api/webhook/firecrawl"})
DEFERRED_CHARGE = "crawldex_deferred_rate_charge"


class _EveryInterval:
    """Logs a warning at most once per interval, saying how many it held back meanwhile."""

    def __init__(self, interval_seconds: float) -> None:
        self._interval = interval_seconds
        self._next_at = 0.0
        self._held_back = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._held_back += 1
            return
        log.warning("%s (%d more since the last such warning)", message % args, self._held_back)
        self._held_back = 0
        self._next_at = now + self._interval


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


# A webhook's senders are few (a Firecrawl deployment's egress addresses, a proxy), and parsing one costs
# ~5 us a request (3 % of a webhook's CPU under load); an address seen lately is not parsed again.
@functools.lru_cache(maxsize=4096)
def _address_key(address: str) -> str | None:
    """The bucket of an address; IPv6 clients by their /64 (one host usually holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _limit_headers(decision: RateDecision, limit: RateLimit) -> list[tuple[bytes, bytes]]:
    return [
        (b"ratelimit-limit", str(decision.limit).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(decision.reset_seconds).encode()),
        (b"ratelimit-policy", limit.policy.encode()),
    ]


def _matching_route(routes: Iterable[BaseRoute], scope: Scope) -> BaseRoute | None:
    for route in routes:
        if route.matches(scope)[0] is not Match.FULL:
            continue
        # FastAPI keeps an included router whole: the route template is one of the router's own routes.
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            found = _matching_route(inner, scope)
            if found is not None:
                return found
        elif getattr(route, "path", None):
            return route
    return None


def _label_route(scope: Scope) -> None:
    """Name the route a refused request was for, so HTTP metrics count its 429 under that route."""
    router = getattr(scope.get("app"), "router", None)
    route = _matching_route(getattr(router, "routes", ()), scope)
    if route is not None:
        scope["route"] = route


def _refusal_body(name: str, decision: RateDecision, limit: RateLimit) -> bytes:
    routes = "webhook deliveries per sender" if name == WEBHOOK else "/api/* requests per client"
    detail = (
        f"rate limit exceeded: {limit.per_minute} {routes} a minute (bursts of {limit.burst}); "
        f"retry in {decision.retry_after_seconds} s"
    )
    return json.dumps({"detail": detail}).encode()


def _count_refusal(name: str, source: str | None) -> None:
    RATE_LIMITED.labels(name).inc()
    if source is not None:
        WEBHOOKS_REJECTED.labels(source, "rate_limited").inc()


class DeferredCharge:
    """The webhook limit's charge of a request whose route counts it with the request's own work in Redis: the
    Firecrawl webhook's, with its jobs (`JobQueue.enqueue_pages`), one round trip for both instead of two.

    The route settles it exactly once: through the enqueue, or with `charge_alone` on every path that queues
    nothing (a rejected or page-less delivery); an answer the route never makes (the body limit's 413) is
    settled by the middleware before it is sent. So every request counts as before. The middleware adds the
    RateLimit-* headers to the answer from the decision, whichever way it was made.
    """

    def __init__(self, charge: RateCharge, middleware: RateLimitMiddleware, source: str) -> None:
        self.charge = charge
        self._middleware = middleware
        self._source = source
        self._counted_alone = False

    @property
    def settled(self) -> bool:
        """Counted (with the jobs, or alone), or tried alone and failed open."""
        return self._counted_alone or self.charge.decision is not None

    async def charge_alone(self) -> Response | None:
        """Count the request on its own now: the 429 to answer if refused, else None (failing open as the
        middleware does when Redis does not answer)."""
        self._counted_alone = True
        decision = await self._middleware.charge_alone(self.charge)
        return self.refusal(decision) if decision is not None and not decision.allowed else None

    def refusal(self, decision: RateDecision) -> Response:
        """The 429 for a refused charge, counted as the middleware counts its own."""
        _count_refusal(WEBHOOK, self._source)
        return Response(
            _refusal_body(WEBHOOK, decision, self.charge.limit),
            status_code=429,
            headers={"retry-after": str(decision.retry_after_seconds)},
            media_type="application/json",
        )


def deferred_charge(request: Request) -> DeferredCharge | None:
    """The request's deferred charge; None when rate limiting is off."""
    charge: DeferredCharge | None = request.scope.get("state", {}).get(DEFERRED_CHARGE)
    return charge


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._redis_url = settings.redis_url
        self._limits = {
            API: RateLimit(settings.rate_limit_api_per_minute, settings.rate_limit_api_burst),
            WEBHOOK: RateLimit(settings.rate_limit_webhook_per_minute, settings.rate_limit_webhook_burst),
        }
        token = settings.api_token.get_secret_value() if settings.api_token else ""
        self._token = token.encode()
        # The bucket of the token holders is named by a hash: the token itself never reaches Redis.
        self._token_key = "token:" + hashlib.sha256(self._token).hexdigest()[:32]
        self._forwarded_header = (
            settings.rate_limit_forwarded_header.lower().encode()
            if settings.rate_limit_trust_forwarded
            else None
        )
        self._limiter: RedisRateLimiter | None = None
        self._fail_open_log = _EveryInterval(FAIL_OPEN_LOG_INTERVAL_SECONDS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_at_shutdown(send))
            return
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        name = WEBHOOK if path.startswith(WEBHOOK_PREFIX) else API
        limit = self._limits[name]
        charge = RateCharge(bucket_key(name, self._identity(scope, name)), limit)
        deferred = DeferredCharge(charge, self, WEBHOOK_SOURCES[path]) if path in DEFERRED_PATHS else None
        if deferred is not None:
            scope.setdefault("state", {})[DEFERRED_CHARGE] = deferred
        else:
            try:
                decision = await self._serving_limiter().charge(charge)
            except DependencyUnavailableError as exc:
                self._failed_open(name, exc)
                await self.app(scope, receive, send)
                return
            if not decision.allowed:
                _count_refusal(name, WEBHOOK_SOURCES.get(path))
                _label_route(scope)
                await self._refuse(send, name, decision, limit)
                return

        async def send_with_limit_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                if deferred is not None and not deferred.settled and message["status"] != 503:
                    # An answer the route did not make (the body limit's 413): counted all the same. A 503
                    # is Redis failing the route's own work: nothing to count it in.
                    await deferred.charge_alone()
                if charge.decision is not None:
                    message["headers"] = [
                        *message.get("headers", []),
                        *_limit_headers(charge.decision, limit),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_limit_headers)

    async def charge_alone(self, charge: RateCharge) -> RateDecision | None:
        """Count ``charge`` with a round trip of its own; None when Redis does not answer (failing open)."""
        try:
            return await self._serving_limiter().charge(charge)
        except DependencyUnavailableError as exc:
            self._failed_open(WEBHOOK, exc)
            return None

    def _serving_limiter(self) -> RedisRateLimiter:
        if self._limiter is None:  # made in the serving loop: its connections belong to that loop
            self._limiter = RedisRateLimiter.from_url(self._redis_url)
        return self._limiter

    def _failed_open(self, name: str, exc: DependencyUnavailableError) -> None:
        RATE_LIMIT_FAIL_OPEN.labels(name).inc()
        self._fail_open_log.warning("rate limits not enforced, Redis did not answer: %s", exc)

    def _identity(self, scope: Scope, name: str) -> str:
        if name == API and self._token:
            authorization = _header(scope, b"authorization") or b""
            scheme, _, presented = authorization.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self._token):
                return self._token_key
        return "addr:" + self._client_address(scope)

    def _client_address(self, scope: Scope) -> str:
        if self._forwarded_header is not None:
            forwarded = _header(scope, self._forwarded_header)
            if forwarded:
                # The last entry is the one the trusted proxy itself added; earlier ones are the client's say.
                last = forwarded.decode("latin-1").rsplit(",", 1)[-1]
                key = _address_key(last)
                if key is not None:
                    return key
        client = scope.get("client")
        if client:
            return _address_key(str(client[0])) or str(client[0])[:64]
        return "unknown"

    @staticmethod
    async def _refuse(send: Send, name: str, decision: RateDecision, limit: RateLimit) -> None:
        body = _refusal_body(name, decision, limit)
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(decision.retry_after_seconds).encode()),
                    *_limit_headers(decision, limit),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _closing_at_shutdown(self, send: Send) -> Send:
        async def send_closing(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                limiter, self._limiter = self._limiter, None
                if limiter is not None:
                    await limiter.aclose()
            await send(message)

        return send_closing
