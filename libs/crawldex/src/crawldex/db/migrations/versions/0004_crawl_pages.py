"""crawl_pages and crawl_reconciliations

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crawl_pages",
        sa.Column("crawl_id", sa.Text(), nullable=False),
        sa.Column("canonical_url", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("crawl_id", "canonical_url", name=op.f("pk_crawl_pages")),
    )
    op.create_table(
        "crawl_reconciliations",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("crawl_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("firecrawl_status", sa.String(length=32), nullable=True),
        sa.Column("firecrawl_total", sa.Integer(), nullable=True),
        sa.Column("pages_listed", sa.Integer(), nullable=False),
        sa.Column("pages_known", sa.Integer(), nullable=False),
        sa.Column("pages_recovered", sa.Integer(), nullable=False),
        sa.Column("pages_failed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crawl_reconciliations")),
    )
    op.create_index(op.f("ix_crawl_reconciliations_crawl_id"), "crawl_reconciliations", ["crawl_id"])


def downgrade() -> None:
    op.drop_table("crawl_reconciliations")
    op.drop_table("crawl_pages")
