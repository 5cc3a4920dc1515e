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

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COUNTRY_KEYS = ("request_country", "nationality", "residence_country", "document_country")
OBJECTING = "('deny', 'review')"

# SQLite: the facets of one event from its JSON text `{p}`, as (name, value) rows.
SQLITE_FACETS = " UNION ALL ".join(
    [
        "SELECT 'tier' AS name, json_extract({p}, '$.tier') AS value",
        "SELECT 'tier', json_extract({p}, '$.decision.tier')",
        *(
            f"SELECT '{name}', json_extract(r.value, '$.code') "  # noqa: S608 (constant SQL)
            f"FROM json_each({{p}}, '{path}') r "
            f"WHERE json_type({{p}}, '{path}') = 'array' AND r.type = 'object'{extra}"
            for path in ("$.reasons", "$.decision.reasons")
            for name, extra in (
                ("reason", ""),
                ("objection", f" AND json_extract(r.value, '$.effect') IN {OBJECTING}"),
            )
        ),
        *(f"SELECT 'country', json_extract({{p}}, '$.{key}')" for key in COUNTRY_KEYS),
    ]
)
SQLITE_INSERT = (
    "INSERT OR IGNORE INTO audit_event_facets (seq, name, value) "  # noqa: S608 (constant SQL)
    "SELECT {seq}, f.name, substr(f.value, 1, 64) FROM (" + SQLITE_FACETS + ") f "
    "WHERE typeof(f.value) = 'text' AND f.value <> ''"
)

# PostgreSQL: the same from the jsonb `p`.
_REASONS = (
    "jsonb_array_elements(CASE WHEN jsonb_typeof({path}) = 'array' "
    "THEN {path} ELSE '[]'::jsonb END)"
)
POSTGRES_FACETS = " UNION ALL ".join(
    [
        "SELECT 'tier' AS name, p -> 'tier' AS value",
        "SELECT 'tier', p #> '{decision,tier}'",
        *(
            f"SELECT '{name}', r -> 'code' FROM {_REASONS.format(path=path)} r{extra}"  # noqa: S608 (constant SQL)
            for path in ("p -> 'reasons'", "p #> '{decision,reasons}'")
            for name, extra in (
                ("reason", ""),
                ("objection", f" WHERE r ->> 'effect' IN {OBJECTING}"),
            )
        ),
        *(f"SELECT 'country', p -> '{key}'" for key in COUNTRY_KEYS),
    ]
)
POSTGRES_FUNCTION = (
    "CREATE FUNCTION audit_events_facets() RETURNS trigger LANGUAGE plpgsql AS $$ "  # noqa: S608 (constant SQL)
    "DECLARE p jsonb := NEW.payload::jsonb; "
    "BEGIN "
    "INSERT INTO audit_event_facets (seq, name, value) "
    "SELECT DISTINCT NEW.seq, f.name, left(f.value #>> '{}', 64) FROM ("
    + POSTGRES_FACETS
    + ") f WHERE jsonb_typeof(f.value) = 'string' AND f.value #>> '{}' <> '' "
    "ON CONFLICT DO NOTHING; "
    "RETURN NULL; "
    "END $$"
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
        _install_sqlite()
    else:
        _install_postgres()


def _install_sqlite() -> None:
    op.execute(
        "CREATE TRIGGER audit_events_facets AFTER INSERT ON audit_events BEGIN "
        + _sqlite_insert("NEW.seq", "NEW.payload")
        + "; END"
    )
    conn = op.get_bind()  # the events recorded before, a batch at a time
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


def _install_postgres() -> None:
    op.execute(POSTGRES_FUNCTION)
    op.execute(
        "CREATE TRIGGER audit_events_facets AFTER INSERT ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION audit_events_facets()"
    )
    op.execute(
        "INSERT INTO audit_event_facets (seq, name, value) "  # noqa: S608 (constant SQL)
        "SELECT DISTINCT e.seq, f.name, left(f.value #>> '{}', 64) "
        "FROM (SELECT seq, payload::jsonb AS p FROM audit_events) e "
        "CROSS JOIN LATERAL (" + POSTGRES_FACETS + ") f "
        "WHERE jsonb_typeof(f.value) = 'string' AND f.value #>> '{}' <> ''"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_facets")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_facets ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_facets()")
    op.drop_index("ix_audit_event_facets_name_value", table_name="audit_event_facets")
    op.drop_table("audit_event_facets")
