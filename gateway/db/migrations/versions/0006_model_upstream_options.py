"""Inference options per model: the upstream's own model name and whether prompt digests are kept.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 09:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_model", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("prompt_digests", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("prompt_digests")
        batch_op.drop_column("upstream_model")
