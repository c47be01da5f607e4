"""Exceptions the core raises; services translate them (HTTP status, job failure)."""

from __future__ import annotations


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
    """The embedder failed to embed; retrying the job later may succeed."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__("embedder", message)
        self.status_code = status_code
