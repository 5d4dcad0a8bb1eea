"""ingest_batches.input_sha256: the key that lets a re-ingest of an unchanged input be skipped

Revision ID: 9a41c7e3d2b8
Revises: 9a4e7c21d5b3
Create Date: 2026-12-07 06:00:00

One nullable, indexed column. `bff.store.ingest` writes the SHA-256 of an input's content digest and of
everything that decides how it is read (site, feed, --patient, parse options, the site's zone); an input whose
key belongs to a batch that stored every record is not read again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9a41c7e3d2b8"
down_revision: str | None = "9a4e7c21d5b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ingest_batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_ingest_batches_input_sha256"), ["input_sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ingest_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ingest_batches_input_sha256"))
        batch_op.drop_column("input_sha256")
