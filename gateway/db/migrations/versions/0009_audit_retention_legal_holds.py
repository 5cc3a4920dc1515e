"""Audit retention: legal holds, the SIEM forwarding cursor, prunes and the prune permit; the
one-round-trip append on PostgreSQL.

The append-only triggers of 0001 now let one path through: a DELETE of an event whose sequence
number is at or below the cut named by a row of `audit_prune_permits`. The pruning service
inserts that row, deletes the prefix and deletes the row again, all in one transaction, so no
other transaction ever sees a permit. UPDATE (and TRUNCATE on PostgreSQL) stay refused.

On PostgreSQL, `audit_append` does an append's three statements (lock the head, insert the
event, move the head) in one call, so the head is locked for one round trip plus the commit
instead of three plus the commit. The caller sends the event's canonical JSON in three pieces
around the two values only the locked head gives (the timestamp, taken under the lock as the
recorder does, and the sequence number); the function hashes exactly as gateway.audit.canonical
does: SHA-256("airlock-audit-v1\0" || prev || SHA-256(head || time || middle || seq || tail)).

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
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_FUNCTION)


APPEND_FUNCTION = """
CREATE FUNCTION audit_append(
    p_head text, p_middle text, p_tail text, p_action varchar, p_actor_id integer,
    p_org_id integer, p_subject_user_id integer, p_model_id integer, p_effect varchar,
    p_payload json
) RETURNS TABLE (seq bigint, occurred_at timestamptz, entry_hash varchar)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_prev varchar;
    v_at timestamptz;
    v_hash varchar;
BEGIN
    SELECT h.seq + 1, h.entry_hash INTO v_seq, v_prev FROM audit_head h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit head row is missing: the database is not migrated';
    END IF;
    v_at := date_trunc('microseconds', clock_timestamp());
    v_hash := encode(sha256(
        convert_to('airlock-audit-v1', 'UTF8') || '\\x00'::bytea || decode(v_prev, 'hex')
        || sha256(convert_to(
            p_head || to_char(v_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            || p_middle || v_seq::text || p_tail, 'UTF8'))
    ), 'hex');
    INSERT INTO audit_events (seq, occurred_at, action, actor_id, org_id, subject_user_id,
                              model_id, effect, payload, prev_hash, entry_hash)
    VALUES (v_seq, v_at, p_action, p_actor_id, p_org_id, p_subject_user_id, p_model_id,
            p_effect, p_payload, v_prev, v_hash);
    UPDATE audit_head h SET seq = v_seq, entry_hash = v_hash WHERE h.id = 1;
    RETURN QUERY SELECT v_seq, v_at, v_hash;
END $$
"""


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
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_append")
    _refuse_every_delete()
    with op.batch_alter_table("audit_legal_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_legal_holds_org_id"))
        batch_op.drop_index("ix_audit_legal_holds_kind_subject_id")
    op.drop_table("audit_legal_holds")
    op.drop_table("audit_prunes")
    op.drop_table("audit_prune_permits")
    op.drop_table("audit_forward_cursors")
