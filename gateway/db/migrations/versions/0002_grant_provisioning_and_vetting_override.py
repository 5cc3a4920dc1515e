"""Grant provisioning (staged per-grant copies) and publisher overrides of vetting.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staged_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("grant_id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["revision_files.id"],
            name=op.f("fk_staged_files_file_id_revision_files"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["grants.id"],
            name=op.f("fk_staged_files_grant_id_grants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staged_files")),
        sa.UniqueConstraint("grant_id", "file_id", name=op.f("uq_staged_files_grant_id_file_id")),
    )
    with op.batch_alter_table("staged_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_staged_files_file_id"), ["file_id"], unique=False)

    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provisioned_at", sa.DateTime(timezone=True), nullable=True))
    # Grants made before provisioning existed were served from the originals: call them ready.
    # A fingerprinting tier's download finds no staged copy and asks for one then.
    op.execute("UPDATE grants SET provisioned_at = granted_at")

    with op.batch_alter_table("revisions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("vetting_override_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("vetting_override_by_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("vetting_override_reason", sa.Text(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_revisions_vetting_override_by_id_users"),
            "users",
            ["vetting_override_by_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("revisions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_revisions_vetting_override_by_id_users"), type_="foreignkey"
        )
        batch_op.drop_column("vetting_override_reason")
        batch_op.drop_column("vetting_override_by_id")
        batch_op.drop_column("vetting_override_at")

    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_column("provisioned_at")

    with op.batch_alter_table("staged_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_staged_files_file_id"))
    op.drop_table("staged_files")
