"""Exceptions the core raises; services translate them (HTTP status, job failure)."""

from __future__ import annotations

from typing import TypeGuard


class CrawldexError(Exception):
    """Base class of crawldex's own errors."""


class ConfigurationError(CrawldexError):
    """The configuration cannot work (refused at start-up)."""


class InvalidDocumentError(CrawldexError, ValueError):
    """A document cannot be indexed as given (bad URL, no content)."""


class DependencyUnavailableError(CrawldexError):
    """An outside system (embedder, vector store, database, queue) cannot be reached right now."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(f"{dependency}: {message}")
        self.dependency = dependency


class EmbedderError(DependencyUnavailableError):
    """The embedder failed to embed; retrying the job later may succeed.

    ``transient``: the embedder is down or overloaded (refused connections, timeouts, 429, 5xx, after the
    adapter's own retries), as opposed to refusing these inputs (413, 422) or failing on them.
    """

    def __init__(self, message: str, status_code: int | None = None, *, transient: bool = False) -> None:
        super().__init__("embedder", message)
        self.status_code = status_code
        self.transient = transient


def is_outage(exc: BaseException) -> TypeGuard[DependencyUnavailableError]:
    """Whether ``exc`` says an outside system is unavailable, which any other input would meet as well,
    rather than that something about these inputs failed."""
    if isinstance(exc, EmbedderError):
        return exc.transient
    return isinstance(exc, DependencyUnavailableError)
