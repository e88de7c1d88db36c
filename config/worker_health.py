"""A Celery worker container's healthcheck: ``python -m config.worker_health``; exit status 0 when healthy.

Healthy when the worker on this host answers a ping through the broker (``celery@HOSTNAME``, Celery's
default node name; pass ``-n`` names as arguments), or, failing that, when a run on this host is
running with a fresh heartbeat. The second clause is for ``--pool solo`` workers (the GPU worker, the
worker that follows Ray jobs): such a worker answers no ping while it runs a task, for hours, but a
thread of its process refreshes the run's heartbeat all along (``training.runs``). A worker that is
gone, wedged or cut off from the broker and the database is unhealthy either way. The web image's
own check (``/healthz`` on port 8000) means nothing in a worker container: compose.yaml points the
workers at this module instead.
"""
from __future__ import annotations

import os
import socket
import sys

PING_TIMEOUT_S = 5.0


def ping_answered(names: list[str]) -> bool:
    from config.celery import app

    try:
        return bool(app.control.ping(destination=names, timeout=PING_TIMEOUT_S))
    except Exception:  # noqa: BLE001 - a broker that does not answer means "no answer"
        return False


def run_beating_here(host: str) -> bool:
    from django.utils import timezone

    from training.models import TrainingRun
    from training.runs import lost_after

    try:
        return TrainingRun.objects.filter(state=TrainingRun.State.RUNNING, worker=host,
                                          heartbeat_at__gte=timezone.now() - lost_after()).exists()
    except Exception:  # noqa: BLE001 - a database that does not answer: not healthy
        return False


def healthy(names: list[str] | None = None) -> bool:
    host = socket.gethostname()
    return ping_answered(names or [f"celery@{host}"]) or run_beating_here(host)


def main(argv: list[str] | None = None) -> int:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    ok = healthy(list(sys.argv[1:] if argv is None else argv))
    print("ok" if ok else "unhealthy: no answer to a ping and no running run with a fresh heartbeat on this host")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
