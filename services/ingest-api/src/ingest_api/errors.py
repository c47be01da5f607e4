"""Translation of core errors into HTTP answers: a reason always, never a traceback."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from crawldex.errors import ConfigurationError, DependencyUnavailableError, InvalidDocumentError

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5


def problem(status_code: int, detail: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DependencyUnavailableError)
    log.warning("dependency unavailable: %s", exc)
    return problem(
        503,
        f"{exc.dependency} is unavailable; retry later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate (a JSON body's ``\\ud800``, which
    pydantic refuses and its error repeats) has no UTF-8 form, and JSONResponse's encoding fails on it."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422, except that a body that is not text (sent without a JSON content type) is shown
    decoded with replacement characters: FastAPI's handler decodes it strictly and fails with a 500."""
    assert isinstance(exc, RequestValidationError)
    detail = jsonable_encoder(
        exc.errors(), custom_encoder={bytes: lambda raw: raw.decode("utf-8", "replace")}
    )
    return _AsciiJSONResponse({"detail": detail}, status_code=422)


async def _invalid_document(_request: Request, exc: Exception) -> JSONResponse:
    return problem(422, str(exc))


async def _misconfigured(_request: Request, exc: Exception) -> JSONResponse:
    log.error("configuration error: %s", exc)
    return problem(500, "server misconfigured; see the server log")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DependencyUnavailableError, _unavailable)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(InvalidDocumentError, _invalid_document)
    app.add_exception_handler(ConfigurationError, _misconfigured)
    app.add_exception_handler(Exception, _unexpected)
