"""Audit appends chained at commit time on PostgreSQL: pending events and a deferred trigger.

The recorder inserts an event's fields and its canonical JSON pieces (see 0009) into
`audit_pending`, in the transaction of the change it records. A `DEFERRABLE INITIALLY DEFERRED`
constraint trigger on that table fires while the transaction commits, one row at a time in
insertion order: it deletes the pending row, locks the head, takes the timestamp under the
lock, hashes exactly as gateway.audit.canonical does (as `audit_append` did), inserts the event
and moves the head. The head is locked from there to the end of the commit, with no client
round trip inside: under 8 writers the holder is no longer descheduled while it holds it.
A rolled-back transaction leaves neither a pending row nor an event. `audit_append` (0009) is
dropped. SQLite keeps its three-statement append (its writes are serialized anyway); the
table exists there too, unused, so that models and migrations agree on both engines.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 10:10:00.000000
"""

from __future__ import annotations

from importlib import import_module

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CHAIN_FUNCTION = """
CREATE FUNCTION audit_chain_pending() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_prev varchar;
    v_at timestamptz;
    v_hash varchar;
BEGIN
    DELETE FROM audit_pending WHERE id = NEW.id;
    SELECT h.seq + 1, h.entry_hash INTO v_seq, v_prev FROM audit_head h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit head row is missing: the database is not migrated';
    END IF;
    v_at := date_trunc('microseconds', clock_timestamp());
    v_hash := encode(sha256(
        convert_to('airlock-audit-v1', 'UTF8') || '\\x00'::bytea || decode(v_prev, 'hex')
        || sha256(convert_to(
            NEW.head || to_char(v_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            || NEW.middle || v_seq::text || NEW.tail, 'UTF8'))
    ), 'hex');
    INSERT INTO audit_events (seq, occurred_at, action, actor_id, org_id, subject_user_id,
                              model_id, effect, payload, prev_hash, entry_hash)
    VALUES (v_seq, v_at, NEW.action, NEW.actor_id, NEW.org_id, NEW.subject_user_id,
            NEW.model_id, NEW.effect, NEW.payload, v_prev, v_hash);
    UPDATE audit_head h SET seq = v_seq, entry_hash = v_hash WHERE h.id = 1;
    RETURN NULL;
END $$
"""
CHAIN_TRIGGER = (
    "CREATE CONSTRAINT TRIGGER audit_pending_chain AFTER INSERT ON audit_pending "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_chain_pending()"
)


def upgrade() -> None:
    op.create_table(
        "audit_pending",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            nullable=False,
        ),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("org_id", sa.Integer(), nullable=True),
        sa.Column("subject_user_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("effect", sa.String(length=16), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("head", sa.Text(), nullable=False),
        sa.Column("middle", sa.Text(), nullable=False),
        sa.Column("tail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_pending")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_append")
        op.execute(CHAIN_FUNCTION)
        op.execute(CHAIN_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_pending_chain ON audit_pending")
        op.execute("DROP FUNCTION IF EXISTS audit_chain_pending()")
        previous = import_module("gateway.db.migrations.versions.0009_audit_retention_legal_holds")
        op.execute(previous.APPEND_FUNCTION)
    op.drop_table("audit_pending")
