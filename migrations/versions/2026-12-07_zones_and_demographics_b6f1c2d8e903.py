"""zones with their provenance, the patient as the EHR names them, why an outcome version exists, the signer's name

Revision ID: b6f1c2d8e903
Revises: 7d3b1e9c4a52
Create Date: 2026-12-07 03:30:00

Plain ADD COLUMN (never a table rebuild), so the sign-offs' immutability triggers stay in place on SQLite too.
Existing patients keep tz_source "unknown": their zone (UTC) was never established.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b6f1c2d8e903"
down_revision: str | None = "7d3b1e9c4a52"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("patients", sa.Column("tz_source", sa.String(length=16), server_default="unknown", nullable=False))
    op.add_column("patients", sa.Column("tz_evidence", sa.JSON(), nullable=True))
    op.add_column("patients", sa.Column("name", sa.String(length=200), nullable=True))
    op.add_column("patients", sa.Column("family_name", sa.String(length=100), nullable=True))
    op.add_column("patients", sa.Column("given_names", sa.String(length=100), nullable=True))
    op.add_column("patients", sa.Column("birth_date", sa.String(length=10), nullable=True))
    op.add_column("patients", sa.Column("mrn", sa.String(length=64), nullable=True))
    op.add_column("outcome_windows", sa.Column("stale_reason", sa.Text(), nullable=True))
    op.add_column("outcome_windows", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("signoffs", sa.Column("signer_name", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outcome_windows") as batch_op:
        batch_op.drop_column("reason")
        batch_op.drop_column("stale_reason")
    with op.batch_alter_table("patients") as batch_op:
        for column in ("mrn", "birth_date", "given_names", "family_name", "name", "tz_evidence", "tz_source"):
            batch_op.drop_column(column)
    op.execute("ALTER TABLE signoffs DROP COLUMN signer_name")  # plain SQL: a batch rebuild would drop the triggers
