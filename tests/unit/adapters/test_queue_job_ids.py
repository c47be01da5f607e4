"""An index job's id is a digest of the page and its delivery: it must not change from one release to the next,
or a delivery replayed across an upgrade would be queued twice instead of joining its job."""

from __future__ import annotations

from crawldex.adapters.queue import index_job_id
from crawldex.models import PageDocument


def test_index_job_ids_are_the_ones_earlier_releases_gave() -> None:
    page = PageDocument(
        url="HTTPS://Example.com/caf\u00e9?b=1&a=2",
        markdown="# Caf\u00e9\n\n\u65e5\u672c",
        title="T",
        crawl_id="c1",
    )
    assert index_job_id(page, "w-1") == "index-0b82570def6bde44f9cec92899e4b10254cccc44"
    bare = PageDocument(url="https://example.com/", markdown="x")
    assert index_job_id(bare, None) == "index-970955a34e1390d689c7495b55bf8ea12c9f066b"


def test_each_part_of_the_page_and_the_delivery_names_a_different_job() -> None:
    page = PageDocument(url="https://example.com/a", markdown="text", title="t")
    ids = {
        index_job_id(page, None),
        index_job_id(page, "w-1"),
        index_job_id(page.model_copy(update={"title": "u"}), None),
        index_job_id(page.model_copy(update={"markdown": "other"}), None),
        # The parts are delimited: text moved from the title to the description is another page.
        index_job_id(page.model_copy(update={"title": "", "description": "t"}), None),
    }
    assert len(ids) == 5
