"""Reward-model runs from the Django side: snapshot → train → publish, triggers, commands, API."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotate.tokens import token_create
from annotate.votes import vote_record
from rewardmodel.models import RewardModel
from tests.conftest import make_comparisons
from tests.tiny import save_tiny_bert
from training.loop import retrain_if_due
from training.models import RunStep, TrainingRun
from training.reward import reward_model_start, reward_model_train_job
from training.runs import run_cancel, run_execute, runs_reap_stale


def vote_by_rule(project, annotator, n: int, *, start: int = 0) -> None:
    """n new comparisons where the answer mentioning 'good' is always preferred."""
    for c in make_comparisons(project, n, texts=("a good answer", "a bad answer"), start=start):
        choice = "a" if "good" in c.completion_a.text else "b"
        vote_record(annotator=annotator, comparison_id=c.pk, choice=choice, strength=2)


@pytest.fixture
def tiny_backbone(tmp_path):
    return str(save_tiny_bert(tmp_path / "tiny-bert"))


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.ARTIFACTS_DIR


def test_a_run_freezes_a_snapshot_trains_and_publishes_a_version(project, annotator, tiny_backbone, artifacts):
    vote_by_rule(project, annotator, 30)
    run = reward_model_start(project=project, config={"backbone": tiny_backbone, "batch_size": 8}, enqueue=False)
    seen = []
    run = run_execute(run.pk, reward_model_train_job, echo=lambda step, total, m: seen.append((step, total)))
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED and run.progress == 1.0
    rm = run.reward_model_out
    assert rm.version == 1 and rm.snapshot == run.snapshot and rm.votes == 30
    assert "eval_accuracy" in rm.metrics
    folder = Path(rm.artifact_uri.removeprefix("file://"))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["snapshot_sha256"] == run.snapshot.sha256
    assert seen and seen[-1][0] == seen[-1][1]
    assert RunStep.objects.filter(run=run).count() == seen[-1][1]
    assert not any(p.name.startswith(".tmp") for p in folder.parent.iterdir())


def test_a_failing_run_is_marked_failed_with_the_error(project, annotator, artifacts):
    vote_by_rule(project, annotator, 4)
    run = reward_model_start(project=project, config={"backbone": "/nonexistent/backbone"}, enqueue=False)
    with pytest.raises(Exception, match="nonexistent"):
        run_execute(run.pk, reward_model_train_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.FAILED
    assert "nonexistent" in run.error
    assert not RewardModel.objects.exists()


def test_bad_settings_are_refused_before_queueing(project):
    with pytest.raises(ValueError, match="learning_rat"):
        reward_model_start(project=project, config={"learning_rat": 1}, enqueue=False)
    assert not TrainingRun.objects.exists()


def test_enough_new_votes_queue_exactly_one_retrain(project, annotator, django_capture_on_commit_callbacks):
    project.retrain_threshold = 5
    project.save()
    with django_capture_on_commit_callbacks(execute=False):
        vote_by_rule(project, annotator, 4)
    assert retrain_if_due(project_id=project.pk) is None
    with django_capture_on_commit_callbacks(execute=True):
        vote_by_rule(project, annotator, 3, start=4)  # the votes_recorded signal calls retrain_if_due after each commit
    runs = TrainingRun.objects.filter(project=project, kind="reward_model")
    assert runs.count() == 1 and runs.get().state == "queued"
    assert retrain_if_due(project_id=project.pk) is None  # one pending at most


def test_only_votes_after_the_latest_reward_model_count_and_the_check_is_cheap(
    project, annotator, tiny_backbone, artifacts, django_capture_on_commit_callbacks, django_assert_max_num_queries
):
    project.retrain_threshold = 3
    project.save()
    with django_capture_on_commit_callbacks(execute=False):
        vote_by_rule(project, annotator, 8)
    run = reward_model_start(project=project, config={"backbone": tiny_backbone, "batch_size": 8}, enqueue=False)
    with django_assert_max_num_queries(1):  # a retrain is queued: one statement says so
        assert retrain_if_due(project_id=project.pk) is None
    run_execute(run.pk, reward_model_train_job)
    with django_capture_on_commit_callbacks(execute=False):
        vote_by_rule(project, annotator, 2, start=8)
    with django_assert_max_num_queries(2):  # every vote pays for this check: two statements, not due yet
        assert retrain_if_due(project_id=project.pk) is None  # the 8 votes before the snapshot do not count
    with django_capture_on_commit_callbacks(execute=False):
        vote_by_rule(project, annotator, 1, start=10)
    run = retrain_if_due(project_id=project.pk)
    assert run is not None and run.reason.startswith("3+ new votes")


def test_cancelling_a_queued_run_means_it_never_starts(project):
    run = reward_model_start(project=project, enqueue=False)
    run_cancel(run=run)
    assert run_execute(run.pk, reward_model_train_job) is None
    run.refresh_from_db()
    assert run.state == "cancelled"


def test_a_run_whose_worker_went_silent_starts_again_and_fails_after_its_last_attempt(project, settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.RUN_MAX_ATTEMPTS = 2
    run = reward_model_start(project=project, enqueue=False)
    silent = timezone.now() - timedelta(seconds=settings.RUN_LOST_AFTER_S + 1)
    TrainingRun.objects.filter(pk=run.pk).update(state="running", heartbeat_at=silent, worker="gpu-7", step=4,
                                                 total_steps=9)
    assert runs_reap_stale() == 1
    run.refresh_from_db()
    assert (run.state, run.attempt, run.step, run.heartbeat_at) == ("queued", 2, 0, None)
    assert "attempt 1 lost: its worker process (gpu-7) stopped reporting for more than 0:02:00, at step 4 of 9" in (
        run.log_tail) and "attempt 2 of 2" in run.log_tail
    TrainingRun.objects.filter(pk=run.pk).update(state="running", heartbeat_at=silent)
    assert runs_reap_stale() == 1
    run.refresh_from_db()
    assert run.state == "failed" and "stopped reporting" in run.error and "attempt 2 of 2" in run.error
    fresh = reward_model_start(project=project, enqueue=False)
    TrainingRun.objects.filter(pk=fresh.pk).update(state="running", heartbeat_at=timezone.now() - timedelta(seconds=20))
    assert runs_reap_stale() == 0  # heartbeats come every 15 s: 20 s of silence is not lost


def test_train_reward_model_command_sync(project, annotator, tiny_backbone, artifacts):
    from io import StringIO

    from django.core.management import call_command

    vote_by_rule(project, annotator, 20)
    out = StringIO()
    call_command("train_reward_model", "--project", "demo", "--sync", "--set", f"backbone={tiny_backbone}",
                 "--set", "batch_size=4", stdout=out)
    assert "Published reward model v1" in out.getvalue()


def test_api_starts_and_reports_a_run(client, project, manager, annotator):
    token = token_create(user=manager)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    r = client.post("/api/projects/demo/reward-models/train", data=json.dumps({"config": {"epochs": 2}}),
                    content_type="application/json", **auth)
    assert r.status_code == 202 and r.json()["state"] == "queued"
    run_id = r.json()["id"]
    assert client.get(f"/api/runs/{run_id}", **auth).json()["config"] == {"epochs": 2}
    assert client.post(f"/api/runs/{run_id}/cancel", **auth).json()["state"] == "cancelled"
    bad = client.post("/api/projects/demo/reward-models/train", data=json.dumps({"config": {"nope": 1}}),
                      content_type="application/json", **auth)
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    other = token_create(user=annotator)
    assert client.get(f"/api/runs/{run_id}", HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 403


def test_starting_a_run_from_the_web_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup();"
        "from training import configs, starts, loop, api, jobs; configs.reward_config({'epochs': 2});"
        "configs.dpo_config({'beta': 0.2, 'loss': 'ipo'}, model='smollm2');"
        "configs.ppo_config({'steps': 3}, model='smollm2', reward='rule:length');"
        "configs.validate('generation', {'temperature': 0.3});"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
