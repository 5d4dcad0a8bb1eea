"""materialized standard outcomes (standard_outcomes) and the recompute job's sweep mark (outcome_sweeps)

Revision ID: 9a4e7c21d5b3
Revises: 3fe5552363b6
Create Date: 2026-12-07 05:30:00

Two new tables, nothing else changes. `standard_outcomes` holds each patient's 14/30/90-day outcome document, its
digest, engine version and the readings watermark it was computed from (bff.store.windows); `outcome_sweeps` how
far the recompute job has looked for readings that no ingestion hook reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9a4e7c21d5b3"
down_revision: str | None = "3fe5552363b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "standard_outcomes",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("days", sa.SmallInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("policy_hash", sa.String(length=64), nullable=True),
        sa.Column("window_start_ms", sa.BigInteger(), nullable=True),
        sa.Column("window_end_ms", sa.BigInteger(), nullable=True),
        sa.Column("tz", sa.String(length=64), nullable=True),
        sa.Column("document", sa.JSON(), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.Column("engine_version", sa.String(length=16), nullable=True),
        sa.Column("readings_count", sa.Integer(), nullable=True),
        sa.Column("readings_max_id", sa.BigInteger(), nullable=True),
        sa.Column("computed_at", Timestamp, nullable=True),
        sa.Column("stale_since", Timestamp, nullable=True),
        sa.Column("stale_reason", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claim_expires_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_standard_outcomes_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_standard_outcomes")),
        sa.UniqueConstraint("patient_id", "days", name=op.f("uq_standard_outcomes_patient_id_days")),
    )
    op.create_index("ix_standard_outcomes_stale", "standard_outcomes", ["stale_since"], unique=False)
    op.create_table(
        "outcome_sweeps",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("readings_id", sa.BigInteger(), nullable=False),
        sa.Column("pending_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_outcome_sweeps")),
    )


def downgrade() -> None:
    op.drop_table("outcome_sweeps")
    op.drop_index("ix_standard_outcomes_stale", table_name="standard_outcomes")
    op.drop_table("standard_outcomes")
