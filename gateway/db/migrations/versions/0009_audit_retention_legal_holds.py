"""Audit retention: legal holds, the SIEM forwarding cursor, prunes and the prune permit.

The append-only triggers of 0001 now let one path through: a DELETE of an event whose sequence
number is at or below the cut named by a row of `audit_prune_permits`. The pruning service
inserts that row, deletes the prefix and deletes the row again, all in one transaction, so no
other transaction ever sees a permit. UPDATE (and TRUNCATE on PostgreSQL) stay refused.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 09:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

APPEND_ONLY_MESSAGE = "audit_events is append-only"
PERMITTED = "EXISTS (SELECT 1 FROM audit_prune_permits p WHERE OLD.seq <= p.cut)"


def upgrade() -> None:
    op.create_table(
        "audit_forward_cursors",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_forward_cursors")),
    )
    op.create_table(
        "audit_prune_permits",
        sa.Column("cut", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("cut", name=op.f("pk_audit_prune_permits")),
    )
    op.create_table(
        "audit_prunes",
        sa.Column("cut_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("cut_hash", sa.String(length=64), nullable=False),
        sa.Column("frontier", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.BigInteger(), nullable=False),
        sa.Column("horizon", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cut_seq", name=op.f("pk_audit_prunes")),
    )
    op.create_table(
        "audit_legal_holds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_audit_legal_holds_created_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_audit_legal_holds_org_id_organizations")
        ),
        sa.ForeignKeyConstraint(
            ["released_by"], ["users.id"], name=op.f("fk_audit_legal_holds_released_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_legal_holds")),
    )
    with op.batch_alter_table("audit_legal_holds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_legal_holds_kind_subject_id", ["kind", "subject_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_audit_legal_holds_org_id"), ["org_id"], unique=False)
    _permit_pruning()


def _permit_pruning() -> None:
    """Let a DELETE through when a permit in the same transaction covers the event's seq."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            f"WHEN NOT {PERMITTED} "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
        )
        return
    op.execute(
        "CREATE OR REPLACE FUNCTION audit_events_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF TG_OP = 'DELETE' AND {PERMITTED} THEN RETURN OLD; END IF; "
        f"RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$"
    )


def _refuse_every_delete() -> None:
    """The triggers as 0001 made them."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
        )
        return
    op.execute(
        "CREATE OR REPLACE FUNCTION audit_events_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$"
    )


def downgrade() -> None:
    _refuse_every_delete()
    with op.batch_alter_table("audit_legal_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_legal_holds_org_id"))
        batch_op.drop_index("ix_audit_legal_holds_kind_subject_id")
    op.drop_table("audit_legal_holds")
    op.drop_table("audit_prunes")
    op.drop_table("audit_prune_permits")
    op.drop_table("audit_forward_cursors")
