"""standard outcomes name their raw data: raw_sha256 (the input digest), raw_sha1 and raw_size

Revision ID: e5b8d3a1c7f2
Revises: 9a41c7e3d2b8
Create Date: 2026-12-07 11:20:00

Three nullable columns on `standard_outcomes`. Rows computed before this revision have none, so they are marked
stale ("raw-data digest added"): the recompute job fills them in, and the view shows them with their age meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5b8d3a1c7f2"
down_revision: str | None = "9a41c7e3d2b8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("standard_outcomes") as batch:
        batch.add_column(sa.Column("raw_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("raw_sha1", sa.String(length=28), nullable=True))
        batch.add_column(sa.Column("raw_size", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE standard_outcomes SET stale_since = CURRENT_TIMESTAMP, stale_reason = 'raw-data digest added' "
        "WHERE document IS NOT NULL AND stale_since IS NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("standard_outcomes") as batch:
        batch.drop_column("raw_size")
        batch.drop_column("raw_sha1")
        batch.drop_column("raw_sha256")
