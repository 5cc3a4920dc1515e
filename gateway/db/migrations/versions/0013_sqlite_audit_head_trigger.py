"""SQLite: the audit head follows each inserted event by trigger.

The recorder used to move the head with an UPDATE of its own after every insert: a third
statement, and on SQLite every statement under the write lock releases Python's GIL and must
win it back while other request threads run. An `AFTER INSERT` trigger on `audit_events` now
moves `audit_head` to the new event inside the insert's own step. The recorder still reads
the head first (the prev hash and the sequence number enter the event's hash). PostgreSQL is
untouched: its commit-time trigger (0012) already moves the head.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 13:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

MOVE_HEAD = (
    "CREATE TRIGGER audit_events_move_head AFTER INSERT ON audit_events BEGIN "
    "UPDATE audit_head SET seq = NEW.seq, entry_hash = NEW.entry_hash WHERE id = 1; END"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(MOVE_HEAD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_move_head")
