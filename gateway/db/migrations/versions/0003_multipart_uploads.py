"""Direct-to-storage multipart uploads in progress (presigned part PUTs to S3).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "multipart_uploads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("part_size", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.Column("storage_upload_id", sa.String(length=1024), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_multipart_uploads_created_by_id_users"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_multipart_uploads_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_multipart_uploads_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_multipart_uploads")),
        sa.UniqueConstraint("org_id", "sha256", name=op.f("uq_multipart_uploads_org_id_sha256")),
        # ids are handles given to clients: never hand a deleted upload's id out again
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("multipart_uploads", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_multipart_uploads_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_multipart_uploads_model_id"), ["model_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("multipart_uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_multipart_uploads_model_id"))
        batch_op.drop_index(batch_op.f("ix_multipart_uploads_created_at"))
    op.drop_table("multipart_uploads")
