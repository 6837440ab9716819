"""Provisional verdicts: verdicts.final and verdicts.superseded_by

Revision ID: rt_0001
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "rt_0001"
down_revision = "sync_0001"  # chained after the mobile-unit tables (all three branched from 0002)
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("final", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column("superseded_by", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_column("superseded_by")
        batch_op.drop_column("final")
