"""Run Alembic migrations programmatically and check models against them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from gateway.db.engine import LOCK_TIMEOUT_MS, sqlite_file, use_wal
from gateway.db.models import Base

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at our migrations and the given database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database schema up to `revision`; a SQLite file is left in WAL mode, so the
    processes that open it next need not switch it (see `use_wal`)."""
    command.upgrade(alembic_config(database_url), revision)
    path = sqlite_file(database_url)
    if path is not None:
        conn = sqlite3.connect(path, timeout=LOCK_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            use_wal(conn.cursor())
        finally:
            conn.close()


def schema_drift(engine: Engine) -> list[object]:
    """Differences between the models and the migrated database (empty when they agree)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))
