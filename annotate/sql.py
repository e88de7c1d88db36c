"""Raw SQL on the default connection, for the statements written out by hand on the hot paths.

The vote, the claim and the token lookup send SQL of their own because building the same
queries with the ORM cost more CPU than running them. Every call here is one statement and one
round trip. Parameters go through ``connection.ops.adapt_unknown_value`` first, so datetimes,
dates, times and decimals reach the database the way the ORM would send them (SQLite wants text,
PostgreSQL takes them as they are); anything else is passed unchanged.

Each function opens its own cursor and does the whole job itself rather than calling another
helper: these run several times per vote.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection


def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Every row the statement returns; ``[]`` for a statement that returns none (UPDATE, DELETE)."""
    adapt = connection.ops.adapt_unknown_value
    with connection.cursor() as cursor:
        cursor.execute(sql, [adapt(param) for param in params])
        return cursor.fetchall() if cursor.description else []


def row(sql: str, params: Sequence[Any] = ()) -> tuple | None:
    """The first row, or None when there is none. ``sql`` must return rows (a SELECT, or RETURNING)."""
    adapt = connection.ops.adapt_unknown_value
    with connection.cursor() as cursor:
        cursor.execute(sql, [adapt(param) for param in params])
        return cursor.fetchone()


def value(sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row, or None when there is no row (``SELECT COUNT(*) ...``)."""
    adapt = connection.ops.adapt_unknown_value
    with connection.cursor() as cursor:
        cursor.execute(sql, [adapt(param) for param in params])
        first = cursor.fetchone()
    return None if first is None else first[0]


def execute(sql: str, params: Sequence[Any] = ()) -> None:
    """Run a statement whose result is not read (UPDATE, DELETE, INSERT without RETURNING)."""
    adapt = connection.ops.adapt_unknown_value
    with connection.cursor() as cursor:
        cursor.execute(sql, [adapt(param) for param in params])
