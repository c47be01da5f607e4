"""Parsing and authentication of the webhooks crawldex receives (pure: no I/O)."""

from __future__ import annotations


class WebhookRejectedError(Exception):
    """The delivery is refused; ``status_code`` is the HTTP answer and the message its reason."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason
