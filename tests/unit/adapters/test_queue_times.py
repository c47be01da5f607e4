"""Times in the job hashes the queue writes itself: byte for byte as RQ writes and reads them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rq.utils import utcformat, utcparse

from crawldex.adapters.queue import rq_time

MOMENTS = [
    datetime(2026, 12, 3, 20, 51, 7, 123456, tzinfo=UTC),
    datetime(2026, 12, 3, 20, 51, 7, tzinfo=UTC),  # no microseconds: still written, as zeros
    datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_a_time_is_written_as_rq_writes_it(moment: datetime) -> None:
    assert rq_time(moment) == utcformat(moment)
    assert utcparse(rq_time(moment)) == moment
