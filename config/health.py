"""``GET /healthz``: is this web process able to serve? The database and the broker answer, or not.

For load balancers, orchestrators and uptime checks: no login, JSON, 200 when both answer and
503 naming the part that does not. It says nothing else (no URLs, hosts, versions or errors
that could leak a secret); the process's own log has the details.
"""
from __future__ import annotations

import logging
import time

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from config.celery import app as celery_app

log = logging.getLogger(__name__)
BROKER_TIMEOUT_S = 2.0


def _database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:  # noqa: BLE001 - any failure means "not reachable"; the log keeps what it was
        log.exception("health: the database did not answer")
        return False


def _broker() -> bool:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
        return True
    except Exception:  # noqa: BLE001
        log.exception("health: the broker did not answer")
        return False


@require_GET
def healthz(request):
    started = time.perf_counter()
    checks = {"database": _database(), "broker": _broker()}
    healthy = all(checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        **{name: "ok" if ok else "unreachable" for name, ok in checks.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    response = JsonResponse(body, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response
