"""The PostgreSQL backend's health check: at most once a second, and still catching dead connections."""
from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's backend")


def _kill_server_side(backend) -> None:
    info = backend.connection.info
    with psycopg.connect(host=info.host, port=info.port, user=info.user, dbname=info.dbname,
                         autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [info.backend_pid])
    time.sleep(0.2)


@pytest.mark.django_db(transaction=True)
def test_a_connection_that_died_while_idle_is_dropped_before_the_request_uses_it():
    connection.ensure_connection()
    _kill_server_side(connection)
    connection.checked_at = time.monotonic() - 5  # idle for a while
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert connection.connection is None
    with connection.cursor() as cursor:  # the next use opens a fresh one
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@pytest.mark.django_db(transaction=True)
def test_a_connection_checked_within_the_second_is_not_checked_again():
    connection.ensure_connection()
    connection.checked_at = time.monotonic()
    _kill_server_side(connection)
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    # The trade: within the second a dead connection is not noticed here (its first query fails).
    assert connection.connection is not None and connection.health_check_done
    connection.close()
