"""the embedded job queue (jobs) and the launch-time EHR reads of each patient (ehr_reads)

Revision ID: 3fe5552363b6
Revises: c4d7e2a9f015
Create Date: 2026-12-07 04:00:00

Two new tables, nothing else changes. `jobs` is the queue of `bff.jobs.queue.StoreQueue` (the embedded default,
without Redis): one row per job key, a lease per claim. `ehr_reads` is what the view shows of a patient's reads of
CGM Observations from the EHR at launch (`bff.jobs.launch_read`), whichever queue runs them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3fe5552363b6"
down_revision: str | None = "c4d7e2a9f015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("once", sa.Boolean(), nullable=False),
        sa.Column("run_at", Timestamp, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", Timestamp, nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("key", name=op.f("uq_jobs_key")),
    )
    op.create_index("ix_jobs_due", "jobs", ["state", "run_at"], unique=False)
    op.create_table(
        "ehr_reads",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("site_key", sa.String(length=64), nullable=False),
        sa.Column("fhir_patient", sa.String(length=256), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("last_read_at", Timestamp, nullable=True),
        sa.Column("since_ms", sa.BigInteger(), nullable=True),
        sa.Column("resume_from_ms", sa.BigInteger(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ehr_reads")),
        sa.UniqueConstraint("site_key", "fhir_patient", name=op.f("uq_ehr_reads_site_key_fhir_patient")),
    )


def downgrade() -> None:
    op.drop_table("ehr_reads")
    op.drop_index("ix_jobs_due", table_name="jobs")
    op.drop_table("jobs")
