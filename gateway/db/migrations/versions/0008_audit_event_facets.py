"""Audit facets: the tier, reason codes and countries of each event, indexed for compliance queries.

A trigger derives them from the payload when an event is inserted, inside the database: the
append (on every audited request, GET resolve among them) sends no extra statement. Facets are
derived data, outside the chain; existing events get theirs here.

  tier       payload.tier, payload.decision.tier
  reason     the code of every reason in payload.reasons and payload.decision.reasons
  objection  the same codes, of reasons whose own effect is deny or review
  country    payload.request_country, nationality, residence_country, document_country

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 09:20:00.000000
"""

# ruff: noqa: S608  (every statement here is built from constants)
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TOP_KEYS = "('tier', 'request_country', 'nationality', 'residence_country', 'document_country')"
OBJECTING = "('deny', 'review')"
REASON_PATHS = ("reasons", "decision.reasons")

# SQLite, from the JSON text {p}: (name, value) rows. One pass over the top-level keys gives the
# tier and the countries; nested values are parsed only when their key occurs in the text (a
# condition on {p} alone is tested once, before json_each runs).
SQLITE_FACETS = " UNION ALL ".join(
    [
        "SELECT CASE key WHEN 'tier' THEN 'tier' ELSE 'country' END AS name, value "
        f"FROM json_each({{p}}) WHERE type = 'text' AND key IN {TOP_KEYS}",
        "SELECT 'tier', json_extract({p}, '$.decision.tier') "
        "WHERE instr({p}, '\"decision\"') AND json_type({p}, '$.decision.tier') = 'text'",
        *(
            f"SELECT n.name, json_extract(r.value, '$.code') FROM json_each({{p}}, '$.{path}') r "
            "JOIN (SELECT 'reason' AS name UNION ALL SELECT 'objection') n "
            f"ON n.name = 'reason' OR json_extract(r.value, '$.effect') IN {OBJECTING} "
            f"WHERE instr({{p}}, '\"reasons\"') AND json_type({{p}}, '$.{path}') = 'array' "
            "AND r.type = 'object' AND json_type(r.value, '$.code') = 'text'"
            for path in REASON_PATHS
        ),
    ]
)
SQLITE_INSERT = (
    "INSERT OR IGNORE INTO audit_event_facets (seq, name, value) "
    "SELECT {seq}, f.name, substr(f.value, 1, 64) FROM (" + SQLITE_FACETS + ") f "
    "WHERE f.value <> ''"
)

# PostgreSQL, from the jsonb p: the top-level values, then the nested ones (the trigger runs
# that second query only when the payload has a decision or reasons). Values are jsonb.
POSTGRES_TOP = (
    "SELECT CASE key WHEN 'tier' THEN 'tier' ELSE 'country' END AS name, value "
    f"FROM jsonb_each(p) WHERE key IN {TOP_KEYS}"
)
_ELEMENTS = "jsonb_array_elements(CASE jsonb_typeof({a}) WHEN 'array' THEN {a} ELSE '[]' END)"
POSTGRES_NESTED = " UNION ALL ".join(
    [
        "SELECT 'tier' AS name, p #> '{decision,tier}' AS value",
        *(
            f"SELECT n.name, r -> 'code' FROM {_ELEMENTS.format(a=array)} r "
            "JOIN (VALUES ('reason'), ('objection')) n (name) "
            f"ON n.name = 'reason' OR r ->> 'effect' IN {OBJECTING}"
            for array in ("p -> 'reasons'", "p #> '{decision,reasons}'")
        ),
    ]
)
_STRINGS = "WHERE jsonb_typeof(f.value) = 'string' AND f.value #>> '{}' <> ''"


def _postgres_insert(seq: str, facets: str) -> str:
    return (
        "INSERT INTO audit_event_facets (seq, name, value) "
        f"SELECT DISTINCT {seq}, f.name, left(f.value #>> '{{}}', 64) FROM ({facets}) f "
        f"{_STRINGS} ON CONFLICT DO NOTHING"
    )


POSTGRES_FUNCTION = (
    "CREATE FUNCTION audit_events_facets() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "DECLARE p jsonb := NEW.payload::jsonb; "
    "BEGIN "
    + _postgres_insert("NEW.seq", POSTGRES_TOP)
    + "; IF p ? 'decision' OR p ? 'reasons' THEN "
    + _postgres_insert("NEW.seq", POSTGRES_NESTED)
    + "; END IF; RETURN NULL; END $$"
)
POSTGRES_BACKFILL = (
    "INSERT INTO audit_event_facets (seq, name, value) "
    "SELECT DISTINCT e.seq, f.name, left(f.value #>> '{}', 64) "
    "FROM (SELECT seq, payload::jsonb AS p FROM audit_events) e "
    f"CROSS JOIN LATERAL ({POSTGRES_TOP} UNION ALL {POSTGRES_NESTED}) f {_STRINGS}"
)


def upgrade() -> None:
    op.create_table(
        "audit_event_facets",
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["seq"],
            ["audit_events.seq"],
            name=op.f("fk_audit_event_facets_seq_audit_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", "name", "value", name=op.f("pk_audit_event_facets")),
    )
    op.create_index(
        "ix_audit_event_facets_name_value",
        "audit_event_facets",
        ["name", "value", "seq"],
        unique=False,
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER audit_events_facets AFTER INSERT ON audit_events BEGIN "
            + _sqlite_insert("NEW.seq", "NEW.payload")
            + "; END"
        )
    else:
        op.execute(POSTGRES_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_events_facets AFTER INSERT ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_facets()"
        )
    backfill(op.get_bind())


def backfill(conn: sa.Connection) -> None:
    """Derive the facets of the events recorded before the trigger existed."""
    if conn.dialect.name != "sqlite":
        conn.execute(sa.text(POSTGRES_BACKFILL))
        return
    statement = sa.text(_sqlite_insert(":seq", ":payload"))
    select = sa.text(
        "SELECT seq, payload FROM audit_events WHERE seq > :last ORDER BY seq LIMIT 5000"
    )
    last = 0
    while rows := conn.execute(select, {"last": last}).all():
        conn.execute(statement, [{"seq": seq, "payload": payload} for seq, payload in rows])
        last = rows[-1][0]


def _sqlite_insert(seq: str, payload: str) -> str:
    return SQLITE_INSERT.replace("{seq}", seq).replace("{p}", payload)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_facets")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_facets ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_facets()")
    op.drop_index("ix_audit_event_facets_name_value", table_name="audit_event_facets")
    op.drop_table("audit_event_facets")
