"""Translation of core errors into HTTP answers: a reason always, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
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
    app.add_exception_handler(InvalidDocumentError, _invalid_document)
    app.add_exception_handler(ConfigurationError, _misconfigured)
    app.add_exception_handler(Exception, _unexpected)
