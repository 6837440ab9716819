"""mobile units: unit tokens, units, and the records they sync (issue 17)

Revision ID: sync_0001
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sync_0001"
down_revision = "phantom_0001"  # chained after the phantom tables (both branched from 0002)
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unit_id", sa.String(length=64), nullable=True))
    op.create_table(
        "units",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=True),
        sa.Column("last_sync_at", sa.DateTime(), nullable=True),
        sa.Column("backlog", sa.Integer(), nullable=True),
        sa.Column("clock_offset_s", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("units", schema=None) as batch_op:
        batch_op.create_index("ix_units_site_id", ["site_id"], unique=False)
    op.create_table(
        "unit_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("unit_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=128), nullable=True),
        sa.Column("sop_uids", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("unit_status", sa.String(length=16), nullable=False),
        sa.Column("unit_verdict", sa.JSON(), nullable=False),
        sa.Column("model_versions", sa.JSON(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=True),
        sa.Column("acquired_at", sa.DateTime(), nullable=True),
        sa.Column("clock_offset_s", sa.Float(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=True),
        sa.Column("verdict_id", sa.Integer(), nullable=True),
        sa.Column("recheck_verdict_id", sa.Integer(), nullable=True),
        sa.Column("recheck_status", sa.String(length=16), nullable=True),
        sa.Column("disagreement", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"]),
        sa.ForeignKeyConstraint(["verdict_id"], ["verdicts.id"]),
        sa.ForeignKeyConstraint(["recheck_verdict_id"], ["verdicts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("unit_records", schema=None) as batch_op:
        batch_op.create_index("ix_unit_records_key", ["key"], unique=True)
        batch_op.create_index("ix_unit_records_unit_id", ["unit_id"], unique=False)


def downgrade() -> None:
    op.drop_table("unit_records")
    op.drop_table("units")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("unit_id")
