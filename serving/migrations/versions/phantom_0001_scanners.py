"""Scanner qualification: scanners, their phantom results, and the verdict kind (patient | phantom)

Revision ID: phantom_0001
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "phantom_0001"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=True))  # NULL = patient (older rows)
    op.create_table(
        "scanners",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scanner_key", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=True),
        sa.Column("station", sa.String(length=64), nullable=True),
        sa.Column("manufacturer", sa.String(length=128), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("serial", sa.String(length=128), nullable=True),
        sa.Column("software", sa.String(length=256), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("last_phantom_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("scanners", schema=None) as batch_op:
        batch_op.create_index("ix_scanners_scanner_key", ["scanner_key"], unique=True)
        batch_op.create_index("ix_scanners_site_id", ["site_id"], unique=False)
    op.create_table(
        "phantom_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scanner_id", sa.Integer(), nullable=False),
        sa.Column("verdict_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=True),
        sa.Column("series_uid", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("valid_until", sa.DateTime(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("measurements", sa.JSON(), nullable=False),
        sa.Column("drift", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["scanner_id"], ["scanners.id"]),
        sa.ForeignKeyConstraint(["verdict_id"], ["verdicts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("phantom_results", schema=None) as batch_op:
        batch_op.create_index("ix_phantom_results_scanner_time", ["scanner_id", "acquired_at"], unique=False)
        batch_op.create_index("ix_phantom_results_verdict_id", ["verdict_id"], unique=False)


def downgrade() -> None:
    op.drop_table("phantom_results")
    op.drop_table("scanners")
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_column("kind")
