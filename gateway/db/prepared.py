"""Prebuilt statements run on the DBAPI cursor, for the few every Hub request makes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Select, Update
from sqlalchemy.exc import DBAPIError

Statement = Select[Any] | Insert | Update


class Prepared:
    """A prebuilt statement compiled once per dialect and run on the DBAPI cursor of `conn`.

    SQLAlchemy's per-statement machinery (execution context, parameter construction, result
    object) costs more than the driver's own work for the statements every Hub request makes
    (about 30 of 35 us for the token lookup on SQLite). This keeps what matters of it: the
    same SQL text the dialect compiles, the columns' bind and result processors (so rows hold
    the same Python values), the connection and transaction of the session, and driver errors
    raised as SQLAlchemy's (a locked or unreachable database stays a 503), with a dropped
    connection invalidated. Statements run this way bypass SQLAlchemy's cursor events.
    """

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, str, str], _Plan | None] = {}

    def all(self, conn: Connection, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        """Every row the statement returns with `params` (none without RETURNING), as tuples
        of processed values."""
        dialect = conn.dialect
        key = (dialect.name, dialect.driver, dialect.paramstyle)
        try:
            plan = self._plans[key]
        except KeyError:
            plan = self._plans.setdefault(key, _Plan.build(self.statement, dialect))
        if plan is None:  # a statement this shortcut cannot run as compiled: the usual path
            result = conn.execute(self.statement, dict(params))
            return [tuple(row) for row in result] if result.returns_rows else []
        return plan.run(conn, params)


_Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Plan:
    """The compiled SQL of one statement on one dialect, and how to bind and read it."""

    sql: str
    positional: bool
    binds: tuple[tuple[str, str | None, object, _Processor], ...]  # name, key, fixed, proc
    results: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column index, processor)

    @classmethod
    def build(cls, statement: Statement, dialect: Dialect) -> _Plan | None:
        """Compile `statement` for `dialect`; None when parameters are rendered at run time."""
        compiled = statement.compile(dialect=dialect)
        if compiled.literal_execute_params or compiled.post_compile_params:
            return None
        if compiled.positional:
            names = list(compiled.positiontup or ())
        else:
            names = list(dict.fromkeys(compiled.bind_names.values()))
        binds: list[tuple[str, str | None, object, _Processor]] = []
        for name in names:
            bind = compiled.binds[name]
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required:
                binds.append((name, bind.key, None, processor))
            else:
                fixed = bind.effective_value
                binds.append((name, None, processor(fixed) if processor else fixed, None))
        processors = [
            c.type.dialect_impl(dialect).result_processor(dialect, None)
            for c in statement.exported_columns  # the RETURNING columns of DML
        ]
        results = tuple((i, p) for i, p in enumerate(processors) if p is not None)
        return cls(compiled.string, bool(compiled.positional), tuple(binds), results)

    def run(self, conn: Connection, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        """Execute on the connection's DBAPI cursor, inside its current transaction."""
        values = []
        for _name, key, fixed, processor in self.binds:
            if key is None:
                values.append(fixed)
            else:
                value = params[key]
                values.append(processor(value) if processor is not None else value)
        args: Any = (
            tuple(values)
            if self.positional
            else {b[0]: v for b, v in zip(self.binds, values, strict=True)}
        )
        fairy = conn.connection
        cursor = fairy.cursor()
        try:
            cursor.execute(self.sql, args)
            raw = cursor.fetchall() if cursor.description is not None else []
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, cursor, self.sql, exc) from exc
        finally:
            cursor.close()
        if not self.results:
            return [tuple(row) for row in raw]
        rows = []
        for row in raw:
            values = list(row)
            for index, processor in self.results:  # only the columns that have one
                value = values[index]
                if value is not None:
                    values[index] = processor(value)
            rows.append(tuple(values))
        return rows


def execute_driver(conn: Connection, sql: str) -> None:
    """Run `sql` (a parameterless statement such as `BEGIN`) on `conn`'s DBAPI cursor: none of
    SQLAlchemy's per-statement machinery, driver errors raised as SQLAlchemy's all the same."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, cursor, sql, exc) from exc
    finally:
        cursor.close()


def _wrapped(conn: Connection, cursor: Any, sql: str, exc: Exception) -> DBAPIError:
    """A driver error as SQLAlchemy raises it; a dropped connection is invalidated first."""
    dialect = conn.dialect
    dropped = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)  # type: ignore[arg-type]
    if dropped:
        conn.invalidate(exc)
    return DBAPIError.instance(  # type: ignore[return-value]  # a DBAPI error in, a DBAPIError out
        sql,
        None,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,  # the token digest is a parameter
        connection_invalidated=dropped,
        dialect=dialect,
    )
