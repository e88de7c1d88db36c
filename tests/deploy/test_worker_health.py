"""A worker container's healthcheck (config/worker_health.py): a ping answered, or a run beating on this host."""
from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from config import worker_health
from training.models import TrainingRun
from training.runs import lost_after

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_ping(monkeypatch):
    monkeypatch.setattr(worker_health, "PING_TIMEOUT_S", 0.5)


def _running_here(project, *, beat_ago: timedelta, host: str | None = None) -> TrainingRun:
    return TrainingRun.objects.create(project=project, kind="dpo", state=TrainingRun.State.RUNNING,
                                      worker=host or socket.gethostname(), heartbeat_at=timezone.now() - beat_ago)


def test_a_worker_that_answers_no_ping_and_runs_nothing_is_unhealthy(project):
    assert not worker_health.healthy()


def test_a_solo_worker_busy_with_a_run_that_beats_is_healthy_without_answering_pings(project):
    _running_here(project, beat_ago=timedelta(seconds=10))
    assert worker_health.healthy()


def test_a_run_whose_heartbeat_stopped_or_that_runs_on_another_host_does_not_count(project):
    _running_here(project, beat_ago=lost_after() + timedelta(seconds=5))
    _running_here(project, beat_ago=timedelta(0), host="another-gpu-host")
    assert not worker_health.healthy()


def test_a_broker_that_does_not_answer_is_no_answer_to_the_ping():
    from config.celery import app

    previous = app.conf.broker_url, app.conf.broker_write_url, app.conf.broker_read_url
    app.conf.broker_url = app.conf.broker_write_url = app.conf.broker_read_url = "redis://127.0.0.1:1/0"
    app.conf.broker_connection_retry = False  # at once: a worker's healthcheck has its own timeout
    try:
        assert worker_health.ping_answered(["celery@nowhere"]) is False
    finally:
        app.conf.broker_url, app.conf.broker_write_url, app.conf.broker_read_url = previous
        app.conf.broker_connection_retry = True


def test_the_command_exits_non_zero_and_says_why_when_unhealthy(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "FLYWHEEL_VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db'}",
           "CELERY_BROKER_URL": "redis://127.0.0.1:1/0", "LOCAL_SECRET_KEY": "1"}
    done = subprocess.run([sys.executable, "-m", "config.worker_health"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "unhealthy" in done.stdout
