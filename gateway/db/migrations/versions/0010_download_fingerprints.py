"""Download fingerprints: per grant and file, the key version, parameters and delivered sha256.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 09:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "download_fingerprints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("grant_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["revision_files.id"],
            name=op.f("fk_download_fingerprints_file_id_revision_files"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["grants.id"],
            name=op.f("fk_download_fingerprints_grant_id_grants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_download_fingerprints_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download_fingerprints")),
        sa.UniqueConstraint(
            "grant_id",
            "file_id",
            "key_version",
            name=op.f("uq_download_fingerprints_grant_id_file_id_key_version"),
        ),
    )
    with op.batch_alter_table("download_fingerprints", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_download_fingerprints_file_id"), ["file_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_download_fingerprints_model_id"), ["model_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_download_fingerprints_sha256"), ["sha256"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("download_fingerprints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_download_fingerprints_sha256"))
        batch_op.drop_index(batch_op.f("ix_download_fingerprints_model_id"))
        batch_op.drop_index(batch_op.f("ix_download_fingerprints_file_id"))
    op.drop_table("download_fingerprints")
