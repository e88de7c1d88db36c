"""A retrain through a real Celery worker process (not eager mode).

``make test`` runs it on SQLite with the embedded file-system broker; ``.ci/run``
again on PostgreSQL with Redis as the broker.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from annotate import services
from annotate.models import Membership
from rewardmodel.models import RewardModel
from tests.conftest import PASSWORD
from tests.tiny import save_tiny_bert
from tests.training.test_reward_runs import vote_by_rule
from training.models import TrainingRun

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def worker(celery_broker, tmp_path, worker_env):
    """A worker process on this test's database and broker, training on a tiny random backbone."""
    from config.celery import app

    backbone = save_tiny_bert(tmp_path / "tiny-bert")
    app.control.purge()  # nothing left over from other tests reaches this worker
    env = {
        **os.environ,
        **celery_broker,
        "DATABASE_URL": database_url(),
        "ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "REWARD_BACKBONE": str(backbone),
        "PYTHONUNBUFFERED": "1",
        **worker_env,
    }
    log = open(tmp_path / "worker.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu", "--pool", "solo",
         "--loglevel", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    yield tmp_path
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.mark.django_db(transaction=True)
def test_retrain_through_a_real_worker_publishes_a_reward_model(worker, tmp_path):
    project = services.project_create(slug="loop", name="Loop")
    project.retrain_threshold = 24
    project.save()
    annotator = services.user_with_role(project=project, username="w", password=PASSWORD, role=Membership.Role.ANNOTATOR)
    # The 24th vote crosses the threshold: the trigger queues a run that the worker process picks up.
    vote_by_rule(project, annotator, 24)
    run = TrainingRun.objects.get(project=project, kind="reward_model")
    assert run.config == {} and "new votes" in run.reason
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.finished:
            break
        time.sleep(0.5)
    log = (worker / "worker.log").read_text()
    assert run.state == TrainingRun.State.SUCCEEDED, f"run ended {run.state}: {run.error}\n--- worker log ---\n{log[-3000:]}"
    assert run.worker  # the worker's host name
    rm = RewardModel.objects.get(project=project)
    assert run.reward_model_out == rm and rm.version == 1 and rm.votes == 24
    assert Path(rm.artifact_uri.removeprefix("file://")).is_relative_to(worker / "artifacts")
    assert run.steps.exists()
