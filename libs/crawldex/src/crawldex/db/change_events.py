"""The change_events table: one row per reported change, through queued → fetching → indexing → end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from crawldex.db.database import Database
from crawldex.db.tables import CHANGE_EVENT_OPEN, ChangeEvent, ChangeEventStatus
from crawldex.models import utc_now


@dataclass(frozen=True)
class ChangeEventRecord:
    id: int
    source: str
    watch_uuid: str | None
    url: str
    canonical_url: str
    detected_at: datetime | None
    received_at: datetime
    status: str
    attempts: int
    notifications: int
    rescrape_job_id: str | None
    index_job_id: str | None
    error: str | None
    indexed_at: datetime | None
    updated_at: datetime


def _record(row: ChangeEvent) -> ChangeEventRecord:
    return ChangeEventRecord(
        id=row.id,
        source=row.source,
        watch_uuid=row.watch_uuid,
        url=row.url,
        canonical_url=row.canonical_url,
        detected_at=row.detected_at,
        received_at=row.received_at,
        status=row.status,
        attempts=row.attempts,
        notifications=row.notifications,
        rescrape_job_id=row.rescrape_job_id,
        index_job_id=row.index_job_id,
        error=row.error,
        indexed_at=row.indexed_at,
        updated_at=row.updated_at,
    )


class ChangeEventRepository:
    """Each method is one short transaction; none is ever held across a fetch or an embedding."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def open(
        self,
        *,
        source: str,
        watch_uuid: str | None,
        url: str,
        canonical_url: str,
        detected_at: datetime | None,
        status: ChangeEventStatus = ChangeEventStatus.QUEUED,
    ) -> tuple[ChangeEventRecord, bool]:
        """Record a change. A second notification for a watch whose event is still queued (not fetched
        yet) joins that event instead: its fetch will see the newest page anyway. Returns (event, joined)."""
        now = utc_now()
        watch_key = watch_uuid or canonical_url
        try:
            async with self._db.session() as session:
                row = ChangeEvent(
                    source=source,
                    watch_uuid=watch_uuid,
                    watch_key=watch_key,
                    url=url,
                    canonical_url=canonical_url,
                    detected_at=detected_at,
                    received_at=now,
                    status=status.value,
                    attempts=0,
                    notifications=1,
                    updated_at=now,
                )
                session.add(row)
                await session.flush()
                return _record(row), False
        except IntegrityError:
            async with self._db.session() as session:
                existing = (
                    await session.execute(
                        select(ChangeEvent)
                        .where(
                            ChangeEvent.watch_key == watch_key,
                            ChangeEvent.status == ChangeEventStatus.QUEUED.value,
                        )
                        .with_for_update()
                    )
                ).scalar_one_or_none()
                if existing is None:  # it left "queued" in between: this notification needs its own event
                    return await self.open(
                        source=source,
                        watch_uuid=watch_uuid,
                        url=url,
                        canonical_url=canonical_url,
                        detected_at=detected_at,
                        status=status,
                    )
                existing.notifications += 1
                existing.updated_at = now
                return _record(existing), True

    async def _update(self, event_id: int, **values: object) -> bool:
        """Change an event that is still open; a final status (indexed, unchanged, gone, failed) is kept.

        Every transition is a compare-and-set: a late or repeated step (a retried rescrape, an index job
        that finished before its rescrape recorded it) can never reopen or overwrite a finished event.
        """
        async with self._db.statement() as conn:  # one UPDATE: atomic without a transaction around it
            result = await conn.execute(
                update(ChangeEvent)
                .where(
                    ChangeEvent.id == event_id, ChangeEvent.status.in_([s.value for s in CHANGE_EVENT_OPEN])
                )
                .values(updated_at=utc_now(), **values)
            )
            return bool(result.rowcount)

    async def set_rescrape_job(self, event_id: int, job_id: str) -> None:
        await self._update(event_id, rescrape_job_id=job_id)

    async def start_fetching(self, event_id: int) -> ChangeEventRecord | None:
        """Mark the event fetching; returns it as it was if it is already final (nothing to do then)."""
        async with self._db.session() as session:
            row = await session.get(ChangeEvent, event_id, with_for_update=True)
            if row is None:
                return None
            if row.status not in {s.value for s in CHANGE_EVENT_OPEN}:
                return _record(row)
            row.status = ChangeEventStatus.FETCHING.value
            row.attempts += 1
            row.updated_at = utc_now()
            return _record(row)

    async def start_indexing(self, event_id: int, index_job_id: str) -> None:
        await self._update(event_id, status=ChangeEventStatus.INDEXING.value, index_job_id=index_job_id)

    async def finish(self, event_id: int, status: ChangeEventStatus, *, error: str | None = None) -> bool:
        """End an open event; False if it had already ended."""
        indexed_at = utc_now() if status in (ChangeEventStatus.INDEXED, ChangeEventStatus.UNCHANGED) else None
        return await self._update(event_id, status=status.value, error=error, indexed_at=indexed_at)

    async def reopen_failed(self, event_id: int, status: ChangeEventStatus) -> bool:
        """Open a failed event again at ``status`` (its failed job is being re-run by an operator).

        False if the event is not failed, or if it would be a second queued event of its watch: that
        other event's fetch brings the newest page anyway. The attempt count is kept.
        """
        try:
            async with self._db.session() as session:
                result = await session.execute(
                    update(ChangeEvent)
                    .where(ChangeEvent.id == event_id, ChangeEvent.status == ChangeEventStatus.FAILED.value)
                    .values(status=status.value, error=None, indexed_at=None, updated_at=utc_now())
                )
                return bool(result.rowcount)  # type: ignore[attr-defined]
        except IntegrityError:
            return False

    async def list_open(self, *, updated_before: datetime, limit: int) -> list[ChangeEventRecord]:
        """Open events nobody has moved on since ``updated_before``, oldest first."""
        async with self._db.session() as session:
            rows = await session.execute(
                select(ChangeEvent)
                .where(
                    ChangeEvent.status.in_([s.value for s in CHANGE_EVENT_OPEN]),
                    ChangeEvent.updated_at < updated_before,
                )
                .order_by(ChangeEvent.updated_at)
                .limit(limit)
            )
            return [_record(r) for r in rows.scalars()]

    async def get(self, event_id: int) -> ChangeEventRecord | None:
        async with self._db.session() as session:
            row = await session.get(ChangeEvent, event_id)
            return _record(row) if row is not None else None

    async def list(
        self,
        *,
        status: str | None,
        canonical_url: str | None,
        since: datetime | None,
        limit: int,
        offset: int,
    ) -> tuple[list[ChangeEventRecord], int]:
        conditions = []
        if status is not None:
            conditions.append(ChangeEvent.status == status)
        if canonical_url is not None:
            conditions.append(ChangeEvent.canonical_url == canonical_url)
        if since is not None:
            conditions.append(ChangeEvent.received_at >= since)
        async with self._db.session() as session:
            total = (
                await session.execute(select(func.count()).select_from(ChangeEvent).where(*conditions))
            ).scalar_one()
            rows = await session.execute(
                select(ChangeEvent)
                .where(*conditions)
                .order_by(ChangeEvent.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return [_record(r) for r in rows.scalars()], int(total)
