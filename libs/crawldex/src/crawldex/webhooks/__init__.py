"""Parsing and authentication of the webhooks crawldex receives (pure: no I/O)."""

from __future__ import annotations

import json
from typing import Any


class WebhookRejectedError(Exception):
    """The delivery is refused; ``status_code`` is the HTTP answer and the message its reason."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


def load_json(body: bytes | str) -> Any:
    """``body`` as JSON, or `WebhookRejectedError` (400) saying why not.

    Besides malformed JSON and bad UTF-8, `json` raises ValueError for an integer of more than 4300 digits
    and RecursionError for arrays or objects nested too deep: a sender's body, so a 400, never a 500.
    NaN and Infinity, which `json` takes by default, are not JSON either.
    """
    try:
        if isinstance(body, str):
            if body.startswith("\ufeff"):  # as `json.loads` refuses it
                raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
            return _DECODER.decode(body)
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))  # as `json.loads`
    except RecursionError as exc:
        raise WebhookRejectedError(400, "body is not valid JSON: nested too deep") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise WebhookRejectedError(400, f"body is not valid JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# One decoder for every body: `json.loads` with an argument builds a new one each call (a fifth of a
# delivery's parsing).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
