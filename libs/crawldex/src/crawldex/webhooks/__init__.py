"""Parsing and authentication of the webhooks crawldex receives (pure: no I/O)."""

from __future__ import annotations

import json
import re
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

    A ``\\uXXXX`` escape of a lone UTF-16 surrogate is valid JSON that no UTF-8 text can hold: JavaScript's
    JSON.stringify writes one for a string cut inside an emoji, which a crawled page's text can be. Such
    a character comes back as U+FFFD, the replacement character, rather than refusing the page or failing
    later where the text is encoded. Raw bytes that are not UTF-8 (or the UTF-16/32 `json` detects) are
    refused.
    """
    try:
        if isinstance(body, str):
            if body.startswith("\ufeff"):  # as `json.loads` refuses it
                raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
            text, raw_surrogates = body, _LONE_SURROGATE.search(body) is not None
        else:
            # Decoded strictly: the text holds no surrogate but those its escapes spell.
            text, raw_surrogates = body.decode(json.detect_encoding(body)), False
        value = _DECODER.decode(text)
        if raw_surrogates or _SURROGATE_ESCAPE.search(text) is not None:
            value = _without_lone_surrogates(value)
        return value
    except RecursionError as exc:
        raise WebhookRejectedError(400, "body is not valid JSON: nested too deep") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise WebhookRejectedError(400, f"body is not valid JSON: {exc}") from exc


# An escaped surrogate (a pair's half or a lone one), and a surrogate itself, which a str body can hold.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with every surrogate left in its strings replaced by U+FFFD (`json` has joined the pairs)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(key): _without_lone_surrogates(item) for key, item in value.items()}
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# One decoder for every body: `json.loads` with an argument builds a new one each call (a fifth of a
# delivery's parsing).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
