"""bulk data exports: jobs with their manifest and concurrency slot, per-file progress, the _since watermark

Revision ID: c4d7e2a9f015
Revises: b6f1c2d8e903
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4d7e2a9f015"
down_revision: str | None = "b6f1c2d8e903"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bulk_jobs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("site_key", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("kickoff_url", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_url", sa.Text(), nullable=True),
        sa.Column("progress", sa.String(length=200), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.Column("transaction_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exports", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_jobs")),
        sa.UniqueConstraint("site_key", "slot", name=op.f("uq_bulk_jobs_site_key_slot")),
    )
    op.create_index("ix_bulk_jobs_site_state", "bulk_jobs", ["site_key", "state"], unique=False)
    op.create_table(
        "bulk_files",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", BIG_ID, nullable=False),
        sa.Column("export_no", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("expected_count", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("already_present", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["bulk_jobs.id"], name=op.f("fk_bulk_files_job_id_bulk_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_files")),
        sa.UniqueConstraint(
            "job_id", "export_no", "kind", "position", name=op.f("uq_bulk_files_job_id_export_no_kind_position")
        ),
    )
    op.create_index(op.f("ix_bulk_files_job_id"), "bulk_files", ["job_id"], unique=False)
    op.create_table(
        "bulk_watermarks",
        sa.Column("site_key", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site_key", "scope", name=op.f("pk_bulk_watermarks")),
    )


def downgrade() -> None:
    op.drop_table("bulk_watermarks")
    op.drop_index(op.f("ix_bulk_files_job_id"), table_name="bulk_files")
    op.drop_table("bulk_files")
    op.drop_index("ix_bulk_jobs_site_state", table_name="bulk_jobs")
    op.drop_table("bulk_jobs")
