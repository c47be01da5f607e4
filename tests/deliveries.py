"""Firecrawl webhook bodies as Firecrawl v2 sends them (PROTOCOLS.md), for tests that send many."""

from __future__ import annotations

import json


def crawl_page_delivery(url: str, markdown: str, *, webhook_id: str, crawl_id: str) -> bytes:
    """A signed-to-be ``crawl.page`` delivery of one page (sign it with crawldex.webhooks.firecrawl.sign)."""
    return json.dumps(
        {
            "success": True,
            "type": "crawl.page",
            "id": crawl_id,
            "webhookId": webhook_id,
            "data": [{"markdown": markdown, "metadata": {"url": url, "sourceURL": url, "statusCode": 200}}],
        }
    ).encode()
