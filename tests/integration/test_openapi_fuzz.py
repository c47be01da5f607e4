"""Schemathesis over the ingest-api's own OpenAPI schema, against the real app and its real dependencies.

Every operation gets positive and negative cases (schema examples, coverage cases and fuzzed ones) with a
valid bearer token, a valid Firecrawl signature over the exact body sent, and the changedetection.io token
wherever the generated request carries the header; a request without it exercises the 401 path. Each answer
must not be a 5xx, and its status code, content type and body must be the ones the schema documents.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from pydantic import SecretStr
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.config import Settings
from crawldex.webhooks.changedetection import TOKEN_HEADER
from crawldex.webhooks.firecrawl import SIGNATURE_HEADER, sign
from ingest_api.app import create_app
from tests.conftest import API_TOKEN, WEBHOOK_SECRET

# About 2 minutes on 2 idle cores; the per-test limit of 300 s also counts the database and model set-up, which
# on a loaded machine take as long again.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHANGEDETECTION_TOKEN = "test-changedetection-token"
FIRECRAWL_WEBHOOK = "/api/webhook/firecrawl"
CHANGEDETECTION_WEBHOOK = "/api/webhook/changedetection"
# 15 operations (4 without parameters, which run out of cases at about 10); schema examples and coverage
# cases come on top of the fuzzed ones: about 2,400 requests.
FUZZED_EXAMPLES_PER_OPERATION = 130
MIN_REQUESTS = 2000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def answers() -> Iterator[Counter[tuple[str, int]]]:
    """Answers per operation and status code. At the end of the module: the run was as large as promised, and
    the credentials worked (every authenticated operation answered something other than 401 at least once)."""
    seen: Counter[tuple[str, int]] = Counter()
    yield seen
    total = sum(seen.values())
    per_operation = Counter[str]()
    for (label, _), count in seen.items():
        per_operation[label] += count
    assert total >= MIN_REQUESTS, f"only {total} requests were sent: {dict(per_operation)}"
    never_past_auth = [
        label
        for label in per_operation
        if " /api/" in label and all(status == 401 for (other, status) in seen if other == label)
    ]
    assert not never_past_auth, f"always 401: {never_past_auth}"
    for webhook in (FIRECRAWL_WEBHOOK, CHANGEDETECTION_WEBHOOK):
        accepted = sum(n for (label, status), n in seen.items() if label.endswith(webhook) and status < 300)
        assert accepted, f"no signed delivery to {webhook} was accepted: {dict(seen)}"


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's `from_fixture` reads and rewrites `node._nodeid` to name each operation's
    subtest; pytest 9 keeps the node id elsewhere, so the attribute is provided (it only labels reports)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def api_schema(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[OpenApiSchema]:
    app = create_app(
        settings.model_copy(
            update={
                "changedetection_token": SecretStr(CHANGEDETECTION_TOKEN),
                # Reconciliation on, so POST /api/crawls/{id}/reconcile queues (no worker runs the job).
                "firecrawl_url": "http://127.0.0.1:9",
                "max_body_bytes": 64 * 1024,
                # No background consumer: queued jobs stay queued, so the run costs the same every time.
                "embedded_workers": False,
            }
        ),
        embedder=embedder,
    )
    # Loading the schema starts the app's lifespan (in schemathesis' event loop thread); it stays up for
    # every request of the run and is shut down here, before the database and Redis fixtures go.
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        yield loaded
    finally:
        shutdown_lifespans()


def _authenticate(case: Case[Any]) -> dict[str, Any]:
    """Extra arguments for the call: the right credentials wherever the generated request has the header."""
    path = case.operation.path
    headers = case.headers if case.headers is not None else {}
    if path == FIRECRAWL_WEBHOOK:
        if SIGNATURE_HEADER not in headers:
            return {}
        # The signature covers the exact bytes, so the body is serialised here and sent as it is signed.
        body = b"" if isinstance(case.body, NotSet) else _raw_body(case.body)
        return {"data": body, "headers": {SIGNATURE_HEADER: sign(WEBHOOK_SECRET, body)}}
    if path == CHANGEDETECTION_WEBHOOK:
        return {"headers": {TOKEN_HEADER: CHANGEDETECTION_TOKEN}} if TOKEN_HEADER in headers else {}
    if path.startswith("/api/"):
        return {"headers": {"Authorization": f"Bearer {API_TOKEN}"}}
    return {}


def _raw_body(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


@schema.parametrize()
@hypothesis.settings(
    max_examples=FUZZED_EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    # Negative cases of small schemas (a GET without parameters, a single header) run out of distinct
    # values before max_examples; that is expected here, not a sign of a slow or filtered strategy.
    suppress_health_check=[hypothesis.HealthCheck.filter_too_much, hypothesis.HealthCheck.too_slow],
)
def test_every_operation_conforms_to_its_schema(case: Case[Any], answers: Counter[tuple[str, int]]) -> None:
    credentials = _authenticate(case)
    response = case.call(**credentials)
    answers[(case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS, headers=credentials.get("headers"))
