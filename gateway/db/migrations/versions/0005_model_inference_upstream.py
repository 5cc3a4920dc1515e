"""Inference upstreams: a model's OpenAI-compatible base URL and the name of the environment
variable holding its credential (a reference, never the secret).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 08:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("upstream_key_ref", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("upstream_key_ref")
        batch_op.drop_column("upstream_url")
