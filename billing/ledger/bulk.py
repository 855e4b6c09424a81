"""Many rows into one table, as fast as the database takes them, inside the session's transaction.

SQLite: the driver's own ``executemany`` with tuples (SQLAlchemy's per-row dict handling costs more than SQLite's
insert). PostgreSQL with psycopg 3: ``COPY … FROM STDIN``. Any other database: SQLAlchemy's executemany. Values
are converted by each column's own SQLAlchemy type first (a timestamp as SQLite stores it, JSON as text), so the
rows read back exactly as rows inserted through SQLAlchemy do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Table, insert
from sqlalchemy.orm import Session

BATCH_ROWS = 50_000  # rows per executemany: bounds the memory of the tuples built for one call


def insert_rows(session: Session, table: Table, columns: Mapping[str, Sequence[Any]]) -> None:
    """Insert ``columns`` (name → one value per row; all the same length) into ``table``."""
    names = list(columns)
    count = len(columns[names[0]]) if names else 0
    if not count:
        return
    connection = session.connection()
    dialect = connection.dialect
    driver = connection.connection.driver_connection
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        values = [_for_copy(table, name, columns[name]) for name in names]
        quoted = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
        with driver.cursor() as cursor, cursor.copy(f"COPY {table.name} ({quoted}) FROM STDIN") as copy:  # type: ignore[union-attr]
            for row in zip(*values, strict=True):
                copy.write_row(row)
        return
    if dialect.name == "sqlite":
        values = [_bound(table, name, columns[name], dialect) for name in names]
        marks = ", ".join("?" for _ in names)
        quoted = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
        cursor = driver.cursor()  # type: ignore[union-attr]
        try:
            for rows in _batches(list(zip(*values, strict=True))):
                cursor.executemany(f"INSERT INTO {table.name} ({quoted}) VALUES ({marks})", rows)
        finally:
            cursor.close()
        return
    rows = [dict(zip(names, row, strict=True)) for row in zip(*(columns[n] for n in names), strict=True)]
    for batch in _batches(rows):
        session.execute(insert(table), batch)


def _batches(rows: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(rows), BATCH_ROWS):
        yield rows[start : start + BATCH_ROWS]


def _bound(table: Table, name: str, values: Sequence[Any], dialect: Any) -> Sequence[Any]:
    """The values as the column's type binds them (each distinct value converted once: a run's timestamp)."""
    processor = table.c[name].type._cached_bind_processor(dialect)
    if processor is None:
        return values
    converted: dict[Any, Any] = {}
    out = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        try:
            out.append(converted[value] if value in converted else converted.setdefault(value, processor(value)))
        except TypeError:  # unhashable (a list for a JSON column)
            out.append(processor(value))
    return out


def _for_copy(table: Table, name: str, values: Sequence[Any]) -> Sequence[Any]:
    """COPY takes Python values through psycopg's own adaptation; JSON goes as its text."""
    if isinstance(table.c[name].type, JSON):
        return [None if v is None else json.dumps(v) for v in values]
    return values
