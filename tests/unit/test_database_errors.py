"""Which database errors mean "unavailable, retry later" (503, job retried) and which are bugs."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from crawldex.db.database import is_unreachable


class DriverError(Exception):
    """What asyncpg raises: an exception carrying the server's SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "unreachable"),
    [
        ("57P01", True),  # admin_shutdown: the server is stopping
        ("57P02", True),  # crash_shutdown
        ("57P03", True),  # cannot_connect_now: "the database system is shutting down / starting up"
        ("08006", True),  # connection_failure
        ("53300", True),  # too_many_connections
        ("23505", False),  # unique_violation: a bug or a race, not an outage
        ("42P01", False),  # undefined_table: a missing migration
    ],
)
def test_driver_errors_are_classified_by_sqlstate(sqlstate: str, unreachable: bool) -> None:
    error = DBAPIError("SELECT 1", None, DriverError(sqlstate))
    assert is_unreachable(error) is unreachable


def test_connection_errors_and_invalidated_connections_are_unreachable() -> None:
    assert is_unreachable(OperationalError("SELECT 1", None, Exception("gone")))
    assert is_unreachable(ConnectionRefusedError())
    assert is_unreachable(DBAPIError("SELECT 1", None, Exception("reset"), connection_invalidated=True))
    assert not is_unreachable(IntegrityError("INSERT", None, DriverError("23505")))
    assert not is_unreachable(ValueError("not a database error"))
