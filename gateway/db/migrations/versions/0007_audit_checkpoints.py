"""Signed audit checkpoints: tree size, Merkle root, head hash, the signed note, the frontier.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 09:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

APPEND_ONLY_MESSAGE = "audit_checkpoints is append-only"


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("key_name", sa.String(length=255), nullable=False),
        sa.Column("key_id", sa.String(length=8), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("frontier", sa.JSON(), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name=op.f("pk_audit_checkpoints")),
    )
    _install_append_only_triggers()


def _install_append_only_triggers() -> None:
    """Refuse UPDATE, DELETE (and TRUNCATE on PostgreSQL) of checkpoints, as for events."""
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_checkpoints_no_{verb.lower()} BEFORE {verb} "
                f"ON audit_checkpoints BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )
        return
    op.execute(
        "CREATE FUNCTION audit_checkpoints_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints "
        "FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_refuse()"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoints_refuse()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_change ON audit_checkpoints")
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_truncate ON audit_checkpoints")
        op.execute("DROP FUNCTION IF EXISTS audit_checkpoints_refuse()")
    op.drop_table("audit_checkpoints")
