"""reading identity: patients belong to a site; readings carry the hash of their record's identity

Revision ID: 5c2e9a7d1b40
Revises: a80570e7964b
Create Date: 2026-12-07 02:10:00

Existing patients keep site_key NULL (created before sites owned their patients); existing readings keep
record_hash NULL (their record identity cannot be rebuilt: the sender was not stored).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c2e9a7d1b40"
down_revision: str | None = "a80570e7964b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site_key", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_patients_site_key"), ["site_key"], unique=False)
    with op.batch_alter_table("readings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("record_hash", sa.BigInteger(), nullable=True))
        batch_op.create_index(
            "ix_readings_record_hash",
            ["record_hash"],
            unique=False,
            postgresql_where=sa.text("record_hash IS NOT NULL"),
            sqlite_where=sa.text("record_hash IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("readings", schema=None) as batch_op:
        batch_op.drop_index("ix_readings_record_hash")
        batch_op.drop_column("record_hash")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patients_site_key"))
        batch_op.drop_column("site_key")
