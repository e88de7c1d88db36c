"""Runs with world_size 2 from the Django side: progress, logs, publishing, cancel and a killed rank.

The job runs under torchrun in two CPU processes (gloo), watched by the run's task exactly as a
GPU worker watches one process per GPU.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from django.conf import settings

from annotate.models import Checkpoint
from annotate.snapshots import snapshot_freeze
from rewardmodel.models import RewardModel
from tests.tiny import save_tiny_llama
from tests.training.test_reward_runs import vote_by_rule
from tests.training.test_worker import worker  # noqa: F401  (the fixture)
from training import configs
from training.models import RunStep, TrainingRun
from training.policy import dpo_job, dpo_start
from training.runs import run_execute

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.ARTIFACTS_DIR


@pytest.fixture
def dpo_inputs(project, annotator, tmp_path, artifacts):
    vote_by_rule(project, annotator, 24)
    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    base = Checkpoint.objects.create(project=project, name="base", uri=str(policy), state=Checkpoint.State.INCUMBENT)
    return base, snapshot_freeze(project=project)


def _dpo(project, dpo_inputs, **config):
    base, snapshot = dpo_inputs
    config = {"world_size": 2, "batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, **config}
    return dpo_start(project=project, checkpoint=base, snapshot=snapshot, config=config, enqueue=False)


def _rank_pids(run: TrainingRun) -> list[int]:
    torchrun = int((Path(settings.ARTIFACTS_DIR) / "jobs" / f"run-{run.pk}" / "torchrun.pid").read_text())
    return [int(p) for p in Path(f"/proc/{torchrun}/task/{torchrun}/children").read_text().split()]


def _gone(pids: list[int]) -> bool:
    return not [p for p in pids if Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"]


def test_world_size_comes_from_the_run_else_the_worker(settings) -> None:
    settings.WORKER_WORLD_SIZE = 4
    assert configs.world_size("dpo", {}) == 4
    assert configs.world_size("dpo", {"world_size": 2}) == 2
    for bad in (0, 2.5, "2", True, 65):
        with pytest.raises(ValueError, match="world_size"):
            configs.validate("dpo", {"world_size": bad})
    with pytest.raises(ValueError, match="multiples of world_size"):
        configs.validate("ppo", {"world_size": 4, "batch_size": 8, "mini_batch_size": 2})
    configs.validate("ppo", {"world_size": 2, "batch_size": 8, "mini_batch_size": 4})


def test_a_two_process_dpo_run_reports_every_step_and_publishes_one_checkpoint(project, dpo_inputs):
    run = _dpo(project, dpo_inputs, max_steps=3)
    run = run_execute(run.pk, dpo_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, f"{run.error}\n{run.log_tail}"
    assert run.progress == 1.0 and (run.step, run.total_steps) == (3, 3)
    assert list(RunStep.objects.filter(run=run).values_list("step", flat=True)) == [1, 2, 3]
    assert "starting 2 processes with torchrun" in run.log_tail
    checkpoint = Checkpoint.objects.get(pk=run.checkpoint_out_id)
    assert checkpoint.meta["run"] == run.pk and checkpoint.meta["metrics"]["optimizer_steps"] == 3
    assert (Path(checkpoint.model_path) / "model.safetensors").exists()
    assert not (Path(settings.ARTIFACTS_DIR) / "jobs" / f"run-{run.pk}").exists()


def test_cancelling_a_two_process_run_stops_both_ranks_and_publishes_nothing(project, dpo_inputs):
    run = _dpo(project, dpo_inputs, max_steps=500)
    ranks: list[int] = []

    def cancel_at_step_two(step, total, metrics):
        if step == 2:
            ranks.extend(_rank_pids(run))
            TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)

    finished = run_execute(run.pk, dpo_job, echo=cancel_at_step_two)
    finished.refresh_from_db()
    assert finished.state == TrainingRun.State.CANCELLED and finished.step < 500
    assert len(ranks) == 2 and _gone(ranks)
    assert not Checkpoint.objects.filter(name=f"dpo-r{run.pk}").exists()
    assert not any((Path(settings.ARTIFACTS_DIR) / "checkpoints" / project.slug).iterdir())


def test_a_rank_killed_mid_run_fails_the_run_with_a_clear_error(project, dpo_inputs):
    run = _dpo(project, dpo_inputs, max_steps=500)
    ranks: list[int] = []

    def kill_rank_one(step, total, metrics):
        if step == 2 and not ranks:
            ranks.extend(sorted(_rank_pids(run)))
            os.kill(ranks[1], signal.SIGKILL)

    with pytest.raises(Exception, match="killed by SIGKILL"):
        run_execute(run.pk, dpo_job, echo=kill_rank_one)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.FAILED
    assert "rank 1 of 2 was killed by SIGKILL" in run.error and "nothing was published" in run.error
    assert _gone(ranks)
    assert run.checkpoint_out is None and not Checkpoint.objects.filter(name=f"dpo-r{run.pk}").exists()
    assert not any((Path(settings.ARTIFACTS_DIR) / "checkpoints" / project.slug).iterdir())


@pytest.fixture
def worker_env() -> dict[str, str]:
    return {"WORKER_WORLD_SIZE": "2"}


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_two_processes_retrains_the_reward_model(worker, tmp_path):  # noqa: F811
    import time

    from annotate import services
    from annotate.models import Membership
    from tests.conftest import PASSWORD

    project = services.project_create(slug="ranks", name="Ranks")
    project.retrain_threshold = 24
    project.save()
    annotator = services.user_with_role(project=project, username="w", password=PASSWORD,
                                        role=Membership.Role.ANNOTATOR)
    vote_by_rule(project, annotator, 24)
    run = TrainingRun.objects.get(project=project, kind="reward_model")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not run.finished:
        time.sleep(0.5)
        run.refresh_from_db()
    log = (worker / "worker.log").read_text()
    assert run.state == TrainingRun.State.SUCCEEDED, f"{run.state}: {run.error}\n{run.log_tail}\n{log[-3000:]}"
    assert "starting 2 processes with torchrun" in run.log_tail
    rm = RewardModel.objects.get(project=project)
    assert run.reward_model_out == rm and rm.votes == 24 and "eval_accuracy" in rm.metrics
    assert run.steps.count() == run.total_steps > 0


def test_a_two_process_ppo_run_through_the_app_reports_its_steps_and_publishes_one_checkpoint(project, tmp_path,
                                                                                              artifacts):
    from annotate import services
    from annotate.models import Snapshot
    from training.policy import ppo_job, ppo_start

    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    base = Checkpoint.objects.create(project=project, name="base", uri=str(policy), state=Checkpoint.State.INCUMBENT)
    for i in range(8):
        services.prompt_get_or_create(project=project, messages=f"Say something good about topic {i}")
    snapshot = Snapshot.objects.create(project=project, uri="file:///unused.jsonl", count=0, votes=0, sha256="0" * 64)
    # The reward: a rule the PPO library scores with (a stored reward model would be a folder it loads).
    scorer = RewardModel.objects.create(project=project, version=1, backbone="rule", snapshot=snapshot,
                                        artifact_uri="rule:count:good")
    run = ppo_start(project=project, checkpoint=base, reward_model=scorer, enqueue=False,
                    config={"world_size": 2, "steps": 2, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 4,
                            "num_threads": 1})
    run = run_execute(run.pk, ppo_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, f"{run.error}\n{run.log_tail}"
    assert "starting 2 processes with torchrun" in run.log_tail
    assert (run.step, run.total_steps) == (2, 2) and RunStep.objects.filter(run=run).count() == 2
    checkpoint = Checkpoint.objects.get(pk=run.checkpoint_out_id)
    assert checkpoint.name == f"ppo-r{run.pk}" and (Path(checkpoint.model_path) / "model.safetensors").exists()
    assert Checkpoint.objects.filter(name__startswith="ppo-").count() == 1
