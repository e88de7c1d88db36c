"""Runs publishing to an S3-compatible store (tests/store.py): reward model, DPO, PPO, the checkpoint sampled on
another host, and a host that loses the store mid-upload (no row; the retry publishes once)."""
from __future__ import annotations

import json
import shutil

import pytest

from annotate import artifacts, services
from annotate.models import Checkpoint, Completion
from annotate.snapshots import snapshot_freeze
from rewardmodel.models import RewardModel
from tests.store import (
    another_host,
    keys_in,
    lose_the_store_after,
    publish_tiny_base,
    publish_tiny_reward_model,
    store_back,
)
from tests.tiny import save_tiny_bert
from tests.training.test_reward_runs import vote_by_rule
from training.generation import generation_job, generation_start
from training.models import TrainingRun
from training.policy import dpo_job, dpo_start, ppo_job, ppo_start
from training.reward import reward_model_start, reward_model_train_job
from training.runs import run_execute
from training.starts import run_retry

pytestmark = pytest.mark.timeout(300)


def published(client, bucket: str, url: str) -> list[str]:
    prefix = url.removeprefix(f"s3://{bucket}/") + "/"
    return [key.removeprefix(prefix) for key in keys_in(client, bucket, prefix)]


def test_a_reward_model_run_publishes_to_the_store_and_another_host_loads_it(
        settings, tmp_path, project, annotator, s3_artifacts, s3_client):
    from rewardmodel.lib.model import load_reward_model

    vote_by_rule(project, annotator, 24)
    backbone = str(save_tiny_bert(tmp_path / "tiny-bert"))
    run = reward_model_start(project=project, config={"backbone": backbone, "batch_size": 8}, enqueue=False)
    run = run_execute(run.pk, reward_model_train_job)
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    rm = run.reward_model_out
    assert rm.artifact_uri == f"s3://{s3_artifacts}/artifacts/reward_models/demo/run-{run.pk}"
    assert run.snapshot.uri.startswith(f"s3://{s3_artifacts}/artifacts/snapshots/demo/")
    keys = published(s3_client, s3_artifacts, rm.artifact_uri)
    assert {"manifest.json", "meta.json", "config.json"} <= set(keys)
    manifest = json.loads(s3_client.get_object(Bucket=s3_artifacts, Key=f"artifacts/reward_models/demo/run-{run.pk}/"
                                                                         "manifest.json")["Body"].read())
    assert sorted(manifest["files"]) == sorted(k for k in keys if k != "manifest.json")
    assert not (tmp_path / "gpu-host" / "cache" / "outgoing").exists() or not any(
        (tmp_path / "gpu-host" / "cache" / "outgoing").rglob("*.json"))

    shutil.rmtree(tmp_path / "gpu-host")  # the GPU host is gone; the store has all there is
    another_host(settings, tmp_path, "gpu-2")
    folder = artifacts.folder_fetch(rm.artifact_uri)
    assert json.loads((folder / "meta.json").read_text())["snapshot_sha256"] == run.snapshot.sha256
    load_reward_model(folder)


def test_a_reward_model_upload_cut_off_leaves_no_row_and_the_retry_publishes_once(
        settings, tmp_path, project, annotator, s3_artifacts, s3_client, monkeypatch):
    vote_by_rule(project, annotator, 16)
    backbone = str(save_tiny_bert(tmp_path / "tiny-bert"))
    first = reward_model_start(project=project, config={"backbone": backbone, "batch_size": 8}, enqueue=False)
    lose_the_store_after(monkeypatch, 2, under="/reward_models/")
    with pytest.raises(ConnectionError, match="mid-upload"):
        run_execute(first.pk, reward_model_train_job)
    first.refresh_from_db()
    assert first.state == TrainingRun.State.FAILED and "mid-upload" in first.error
    assert not RewardModel.objects.exists() and first.reward_model_out is None
    assert published(s3_client, s3_artifacts, f"s3://{s3_artifacts}/artifacts/reward_models/demo/run-{first.pk}") == []

    store_back(monkeypatch)
    retry = run_retry(run=first, enqueue=False)
    retry = run_execute(retry.pk, reward_model_train_job)
    assert retry.state == TrainingRun.State.SUCCEEDED, retry.error
    assert list(RewardModel.objects.values_list("version", "artifact_uri")) == [
        (1, f"s3://{s3_artifacts}/artifacts/reward_models/demo/run-{retry.pk}")]
    assert "manifest.json" in published(s3_client, s3_artifacts, retry.reward_model_out.artifact_uri)


@pytest.fixture
def stored_base(project, annotator, tmp_path, s3_artifacts):
    """A base policy published to the store (as an imported checkpoint would be) and a frozen snapshot."""
    vote_by_rule(project, annotator, 16)
    return publish_tiny_base(project), snapshot_freeze(project=project)


def test_a_dpo_run_pulls_its_inputs_publishes_to_the_store_and_another_host_samples_it(
        settings, tmp_path, project, stored_base, s3_artifacts, s3_client):
    base, snapshot = stored_base
    shutil.rmtree(tmp_path / "gpu-host")  # the DPO host has neither the base nor the snapshot on its disk
    another_host(settings, tmp_path, "gpu-1")
    run = dpo_start(project=project, checkpoint=base, snapshot=snapshot,
                    config={"batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "max_steps": 2}, enqueue=False)
    run = run_execute(run.pk, dpo_job)
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    checkpoint = run.checkpoint_out
    assert checkpoint.uri == f"s3://{s3_artifacts}/artifacts/checkpoints/demo/dpo-run-{run.pk}"
    assert {"manifest.json", "meta.json", "model.safetensors"} <= set(published(s3_client, s3_artifacts, checkpoint.uri))

    shutil.rmtree(tmp_path / "gpu-1")
    another_host(settings, tmp_path, "gpu-2")
    for i in range(2):
        services.prompt_get_or_create(project=project, messages=f"Tell me about topic {i}")
    generation = generation_start(project=project, checkpoints=[checkpoint, base],
                                  config={"prompts": 2, "max_new_tokens": 4, "temperature": 1.0}, enqueue=False)
    generation = run_execute(generation.pk, generation_job)
    assert generation.state == TrainingRun.State.SUCCEEDED, generation.error
    assert Completion.objects.filter(checkpoint=checkpoint).count() == 2
    assert (tmp_path / "gpu-2" / "cache" / "folders").is_dir()


def test_a_dpo_upload_cut_off_leaves_no_checkpoint_and_the_retry_publishes_once(
        settings, tmp_path, project, stored_base, s3_artifacts, s3_client, monkeypatch):
    base, snapshot = stored_base
    config = {"batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "max_steps": 1}
    first = dpo_start(project=project, checkpoint=base, snapshot=snapshot, config=config, enqueue=False)
    lose_the_store_after(monkeypatch, 1, under="/dpo-run-")
    with pytest.raises(ConnectionError):
        run_execute(first.pk, dpo_job)
    assert not Checkpoint.objects.filter(name__startswith="dpo-").exists()
    assert published(s3_client, s3_artifacts, f"s3://{s3_artifacts}/artifacts/checkpoints/demo/dpo-run-{first.pk}") == []
    assert not (tmp_path / "gpu-host" / "cache" / "outgoing").exists() or not any(
        (tmp_path / "gpu-host" / "cache" / "outgoing").rglob("*.safetensors"))

    store_back(monkeypatch)
    retry = run_execute(run_retry(run=TrainingRun.objects.get(pk=first.pk), enqueue=False).pk, dpo_job)
    assert retry.state == TrainingRun.State.SUCCEEDED, retry.error
    assert list(Checkpoint.objects.filter(name__startswith="dpo-").values_list("uri", flat=True)) == [
        f"s3://{s3_artifacts}/artifacts/checkpoints/demo/dpo-run-{retry.pk}"]


def test_a_ppo_run_pulls_policy_and_reward_model_from_the_store_and_publishes_there(
        settings, tmp_path, project, stored_base, s3_artifacts, s3_client):
    base, snapshot = stored_base
    scorer = publish_tiny_reward_model(project, snapshot)
    shutil.rmtree(tmp_path / "gpu-host")  # the PPO host has neither the policy nor the reward model on its disk
    host = another_host(settings, tmp_path, "gpu-1")
    run = ppo_start(project=project, checkpoint=base, reward_model=scorer, enqueue=False,
                    config={"steps": 2, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 4, "num_threads": 1})
    run = run_execute(run.pk, ppo_job)
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    assert (run.step, run.total_steps) == (2, 2)
    checkpoint = run.checkpoint_out
    assert checkpoint.uri == f"s3://{s3_artifacts}/artifacts/checkpoints/demo/ppo-run-{run.pk}"
    assert checkpoint.parent == base and checkpoint.meta["reward_model_version"] == 1
    assert {"manifest.json", "meta.json", "model.safetensors"} <= set(published(s3_client, s3_artifacts, checkpoint.uri))
    assert (host / "cache" / "folders").is_dir()  # both inputs came through this host's cache
    assert not any((host / "scratch").rglob("*.safetensors"))  # nothing staged is left behind

    shutil.rmtree(host)
    another_host(settings, tmp_path, "gpu-2")
    meta = json.loads((artifacts.folder_fetch(checkpoint.uri) / "meta.json").read_text())
    assert meta["lineage"]["run"] == run.pk and meta["lineage"]["reward_model_version"] == 1


def test_a_two_process_dpo_run_trains_into_local_staging_and_publishes_to_the_store(
        settings, tmp_path, project, stored_base, s3_artifacts, s3_client):
    base, snapshot = stored_base
    run = dpo_start(project=project, checkpoint=base, snapshot=snapshot, enqueue=False,
                    config={"world_size": 2, "batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "max_steps": 2})
    run = run_execute(run.pk, dpo_job)
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    assert run.checkpoint_out.uri == f"s3://{s3_artifacts}/artifacts/checkpoints/demo/dpo-run-{run.pk}"
    assert {"manifest.json", "model.safetensors"} <= set(published(s3_client, s3_artifacts, run.checkpoint_out.uri))
    assert not (tmp_path / "gpu-host" / "scratch" / "jobs" / f"run-{run.pk}").exists()
