"""Runs on a real Ray cluster (a local head), followed by the run's task: submit, progress, publish,
cancel, failure, and a watcher that dies mid-job and is replaced without a second job.

The tests against the head run when ``FLYWHEEL_SERVICES=1`` and ``RAY_ADDRESS`` names its dashboard
(``.ci/run`` starts one); the rest need no cluster.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from annotate import artifacts, services
from annotate.canary import canary_hold
from annotate.models import Checkpoint, Comparison, Completion
from annotate.snapshots import snapshot_freeze
from annotate.votes import vote_record
from rewardmodel.models import RewardModel
from tests.conftest import make_comparisons
from tests.store import another_host, keys_in, publish_tiny_base, publish_tiny_reward_model
from tests.tiny import save_tiny_bert, save_tiny_llama
from tests.training.test_reward_runs import vote_by_rule
from tests.training.test_worker import database_url
from training import ray_jobs, runs
from training.generation import generation_job, generation_start
from training.lib.distributed import JobFailed
from training.models import RunStep, TrainingRun
from training.policy import dpo_job, dpo_start, ppo_job, ppo_start
from training.reward import reward_model_start, reward_model_train_job
from training.runs import run_cancel, run_execute, runs_reap_stale, runs_reattach

ROOT = Path(__file__).resolve().parents[2]
RAY_ADDRESS = os.environ.get("RAY_ADDRESS", "")


def on_the_head(test):
    """A test against the head: real processes see the rows, so each commits (transaction=True)."""
    for mark in (pytest.mark.services, pytest.mark.timeout(300), pytest.mark.django_db(transaction=True),
                 pytest.mark.skipif(os.environ.get("FLYWHEEL_SERVICES") != "1" or not RAY_ADDRESS.startswith("http"),
                                    reason="needs a Ray head: FLYWHEEL_SERVICES=1 and RAY_ADDRESS=http://HOST:8265")):
        test = mark(test)
    return test


# Without a cluster: the command, the runtime environment, the bookkeeping.

def test_one_process_runs_the_entry_point_and_several_run_it_under_torchrun():
    assert ray_jobs.entrypoint(1, "/a/spec.json") == "python -m training.lib.distributed /a/spec.json"
    several = ray_jobs.entrypoint(4, "/a/spec.json")
    assert several.startswith("python -m torch.distributed.run --standalone")
    assert "--nproc-per-node=4" in several and several.endswith("-m training.lib.distributed /a/spec.json")


def test_the_job_gets_the_repository_without_environments_data_or_screenshots(settings):
    settings.RAY_CPUS_PER_PROCESS = 2
    env = ray_jobs.runtime_env()
    assert env["working_dir"] == str(settings.BASE_DIR)
    assert {".venv", "var", ".git", "bench/out", "docs/screenshots"} <= set(env["excludes"])
    assert env["env_vars"]["OMP_NUM_THREADS"] == "2"


def test_a_run_with_a_ray_job_stays_on_ray_even_on_a_worker_set_to_run_locally(settings):
    settings.RUN_BACKEND = "local"
    assert not ray_jobs.on_ray(TrainingRun(kind="dpo"))
    assert ray_jobs.on_ray(TrainingRun(kind="dpo", ray_job_id="flywheel-run-1-dpo-ab12cd34"))
    settings.RUN_BACKEND = "ray"
    assert ray_jobs.on_ray(TrainingRun(kind="dpo"))


def test_a_replacement_watcher_forwards_only_the_log_lines_after_those_in_the_tail():
    lines = ["setting up", "PROGRESS {}", "step one", "step two", "", "step three"]
    assert ray_jobs._forwarded("earlier\nstep one\nstep two", lines) == 4
    assert ray_jobs._forwarded("something else", lines) == 0


def _running_on_ray(project, *, beat_ago: timedelta) -> TrainingRun:
    return TrainingRun.objects.create(project=project, kind="dpo", state=TrainingRun.State.RUNNING,
                                      ray_job_id="flywheel-run-9-dpo-00000000",
                                      heartbeat_at=timezone.now() - beat_ago)


def test_a_starting_worker_re_enqueues_runs_whose_ray_job_lost_its_watcher(project, monkeypatch):
    sent = []
    monkeypatch.setattr(runs, "run_enqueue", sent.append)
    lost = _running_on_ray(project, beat_ago=timedelta(minutes=5))
    _running_on_ray(project, beat_ago=timedelta(seconds=5))  # its watcher is alive
    assert runs_reattach() == [lost.pk] and sent == [lost.pk]


def test_a_ray_run_nobody_followed_for_long_is_failed_naming_the_job(project):
    run = _running_on_ray(project, beat_ago=runs.STALE_AFTER + timedelta(minutes=1))
    assert runs_reap_stale() == 1
    run.refresh_from_db()
    assert run.state == TrainingRun.State.FAILED and "ray job stop flywheel-run-9-dpo-00000000" in run.error


def test_a_second_delivery_leaves_a_ray_run_whose_watcher_is_alive_alone(project, monkeypatch):
    monkeypatch.setattr(runs, "REATTACH_AFTER", timedelta(seconds=1))
    run = _running_on_ray(project, beat_ago=timedelta(0))
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() + timedelta(hours=1))  # keeps beating
    assert runs._claim(run.pk) is None
    stale = _running_on_ray(project, beat_ago=timedelta(seconds=2))
    assert runs._claim(stale.pk).pk == stale.pk  # taken over: its heartbeat is now this worker's


def test_a_checkpoint_a_node_left_incomplete_at_its_final_place_is_never_published(
        project, s3_artifacts, s3_client, tmp_path):
    """A job through the store publishes its checkpoint from the node (`publish_to`); one that reported
    success without a manifest there is a failure, and what it sent is removed."""
    run = _running_on_ray(project, beat_ago=timedelta(0))
    final = runs.output_url(run)
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    ray_jobs.stage(run, {"kind": "dpo", "config": {}, "data": str(data)}, "dpo", publish_to=final)
    artifacts.blob_write(ray_jobs.staged_url(run, "dpo", "result.json"), b'{"metrics": {}}')
    artifacts.blob_write(f"{final}/model.safetensors", b"the first bytes")  # no manifest: the upload stopped
    with pytest.raises(JobFailed, match=f"its output at {final} is incomplete"):
        ray_jobs.collect(run, "dpo", None)
    assert ray_jobs._published_at(run, "dpo") == final  # what run_on_ray removes for a job that did not succeed
    artifacts.artifact_delete(final)
    assert keys_in(s3_client, s3_artifacts, final.split("/", 3)[3]) == []
    artifacts.blob_write(f"{final}/manifest.json", b'{"files": {}}')  # a complete folder: collected where it is
    assert ray_jobs.collect(run, "dpo", None)["published"] == final


# Against the head.

@pytest.fixture
def ray(settings, tmp_path):
    """This worker set to send runs to the head at RAY_ADDRESS, on CPUs; the Jobs client."""
    settings.RUN_BACKEND = "ray"
    settings.RAY_ADDRESS = RAY_ADDRESS
    settings.RAY_GPUS_PER_PROCESS = 0
    settings.RAY_CPUS_PER_PROCESS = 1
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    monkey = pytest.MonkeyPatch()
    monkey.setattr(ray_jobs, "POLL_S", 0.3)
    client = ray_jobs.client()
    try:
        client.list_jobs()
    except Exception as error:  # noqa: BLE001 — said plainly: the head .ci/run starts is not there
        pytest.fail(f"no Ray dashboard answers at {RAY_ADDRESS}: {error}")
    yield client
    monkey.undo()


def _jobs_of(client, run: TrainingRun) -> list:
    return [j for j in client.list_jobs() if (j.submission_id or "").startswith(f"flywheel-run-{run.pk}-")
            and j.metadata.get("project") == run.project.slug and j.submission_id == run.ray_job_id]


def _status(client, run: TrainingRun) -> str:
    return str(client.get_job_status(run.ray_job_id).value)


@pytest.fixture
def dpo_inputs(project, annotator, tmp_path):
    vote_by_rule(project, annotator, 16)
    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    base = Checkpoint.objects.create(project=project, name="base", uri=str(policy), state=Checkpoint.State.INCUMBENT)
    return base, snapshot_freeze(project=project)


def _dpo(project, dpo_inputs, **config) -> TrainingRun:
    base, snapshot = dpo_inputs
    config = {"batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, **config}
    return dpo_start(project=project, checkpoint=base, snapshot=snapshot, config=config, enqueue=False)


@on_the_head
def test_a_reward_model_run_on_ray_reports_progress_and_publishes_one_version(ray, project, annotator, tmp_path):
    vote_by_rule(project, annotator, 24)
    backbone = str(save_tiny_bert(tmp_path / "tiny-bert"))
    run = reward_model_start(project=project, config={"backbone": backbone, "batch_size": 8, "num_threads": 1},
                             enqueue=False)
    run_execute(run.pk, reward_model_train_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    assert run.ray_job_id.startswith(f"flywheel-run-{run.pk}-reward_model-") and _status(ray, run) == "SUCCEEDED"
    assert len(_jobs_of(ray, run)) == 1
    assert run.progress == 1.0 and run.step == run.total_steps > 0
    assert RunStep.objects.filter(run=run).count() == run.total_steps
    assert "submitted Ray job" in run.log_tail and "Running entrypoint" in run.log_tail
    assert RewardModel.objects.filter(project=project).count() == 1
    assert Path(run.reward_model_out.artifact_uri.removeprefix("file://"), "meta.json").exists()
    assert not (tmp_path / "artifacts" / "jobs" / f"run-{run.pk}").exists()


@on_the_head
def test_a_dpo_run_on_a_cluster_without_the_worker_s_disk_goes_through_the_store(
        ray, project, annotator, tmp_path, s3_artifacts, s3_client, settings):
    vote_by_rule(project, annotator, 16)
    base = publish_tiny_base(project)
    snapshot = snapshot_freeze(project=project)
    another_host(settings, tmp_path, "watcher")  # the worker that submits: nothing of the publisher's cache
    run = _dpo(project, (base, snapshot), max_steps=2)
    run_execute(run.pk, dpo_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    assert ray.get_job_info(run.ray_job_id).entrypoint.startswith(
        f"python -m training.remote_job 1 s3://{s3_artifacts}/artifacts/jobs/run-{run.pk}/dpo/spec.json")
    assert list(RunStep.objects.filter(run=run).values_list("step", flat=True)) == [1, 2]
    checkpoint = run.checkpoint_out
    assert checkpoint.uri == f"s3://{s3_artifacts}/artifacts/checkpoints/{project.slug}/dpo-run-{run.pk}"
    assert "manifest.json" in [k.rsplit("/", 1)[-1] for k in keys_in(s3_client, s3_artifacts, checkpoint.uri.split("/", 3)[3])]
    assert keys_in(s3_client, s3_artifacts, f"artifacts/jobs/run-{run.pk}/") == []  # the staging is gone
    # The node pulled the base itself: the worker never downloaded it, and the lineage names it by URL.
    assert not list((Path(settings.ARTIFACTS_CACHE_DIR) / "folders").glob("*/base"))
    assert checkpoint.meta["config"]["model"] == base.uri
    # The node published the checkpoint at its final place: the worker neither fetched nor uploaded it.
    assert f"the Ray node published the checkpoint to {checkpoint.uri}" in run.log_tail
    assert not list(Path(settings.ARTIFACTS_CACHE_DIR).glob(f"*/*/dpo-run-{run.pk}"))
    assert not list(Path(settings.ARTIFACTS_CACHE_DIR).glob("outgoing/*/*"))
    assert artifacts.folder_fetch(checkpoint.uri).joinpath("model.safetensors").is_file()  # complete, verified


@on_the_head
def test_a_reward_model_on_a_cluster_is_scored_on_the_canaries_and_published_by_the_node(
        ray, project, annotator, tmp_path, s3_artifacts, s3_client, settings):
    vote_by_rule(project, annotator, 16)
    canaries = make_comparisons(project, 3, texts=("a good answer", "a bad answer"), start=100)
    assert canary_hold(project=project, count=3) == 3
    for comparison, choice in zip(canaries, ("a", "b", "tie"), strict=True):
        vote_record(annotator=annotator, comparison_id=comparison.pk, choice=choice)
    another_host(settings, tmp_path, "watcher")  # the worker that submits: a disk of its own
    run = reward_model_start(project=project, enqueue=False,
                             config={"backbone": str(save_tiny_bert(tmp_path / "bert")), "batch_size": 8})
    run_execute(run.pk, reward_model_train_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    version = run.reward_model_out
    assert version.artifact_uri == f"s3://{s3_artifacts}/artifacts/reward_models/{project.slug}/run-{run.pk}"
    assert version.metrics["canary_pairs"] == 2 and version.metrics["canary_ties"] == 1  # scored on the node
    assert 0.0 <= version.metrics["canary_accuracy"] <= 1.0
    assert f"the Ray node published the reward model to {version.artifact_uri}" in run.log_tail
    # It never came to this worker: no cached copy, nothing staged to upload, the staging prefix gone.
    assert not list(Path(settings.ARTIFACTS_CACHE_DIR).glob(f"*/*/run-{run.pk}"))
    assert not list(Path(settings.ARTIFACTS_CACHE_DIR).glob("outgoing/*/*"))
    assert keys_in(s3_client, s3_artifacts, f"artifacts/jobs/run-{run.pk}/") == []
    assert (artifacts.folder_fetch(version.artifact_uri) / "meta.json").is_file()  # complete, verified


@on_the_head
def test_a_two_process_dpo_run_is_one_ray_job_under_torchrun_and_publishes_one_checkpoint(ray, project, dpo_inputs):
    run = _dpo(project, dpo_inputs, world_size=2, max_steps=2)
    run_execute(run.pk, dpo_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    assert len(_jobs_of(ray, run)) == 1 and _status(ray, run) == "SUCCEEDED"
    assert list(RunStep.objects.filter(run=run).values_list("step", flat=True)) == [1, 2]
    checkpoint = Checkpoint.objects.get(produced_by=run)
    assert checkpoint.meta["run"] == run.pk and (Path(checkpoint.model_path) / "model.safetensors").exists()
    assert Checkpoint.objects.filter(project=project, name__startswith="dpo-").count() == 1


@on_the_head
def test_a_generation_run_samples_on_ray_and_queues_battles_here(ray, project, tmp_path, settings):
    settings.GUARD_PROMPTS = 4  # every prompt: the guard's that the battle leaves out ride in the same jobs
    new, old = save_tiny_llama(tmp_path / "new", chat=True, seed=1), save_tiny_llama(tmp_path / "old", chat=True)
    incumbent = services.checkpoint_get_or_create(project=project, name="inc", uri=str(old), state="incumbent")
    candidate = services.checkpoint_get_or_create(project=project, name="cand", uri=str(new), parent=incumbent)
    for i in range(4):
        services.prompt_get_or_create(project=project, messages=f"Tell me about topic {i}")
    run = generation_start(project=project, checkpoints=[candidate, incumbent],
                           config={"prompts": 3, "max_new_tokens": 6, "temperature": 1.0}, enqueue=False)
    run_execute(run.pk, generation_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    # Two sampling jobs, then the guard's measurement (the KL from the incumbent) as a third, all on the cluster.
    assert run.ray_job_id.startswith(f"flywheel-run-{run.pk}-guard-")
    assert "guard: measuring on the Ray cluster" in run.log_tail
    candidate.refresh_from_db()
    assert candidate.meta["guard"]["kl_from_base"] is not None and candidate.meta["guard"]["base"] == incumbent.pk
    assert Completion.objects.filter(checkpoint=candidate).count() == 3  # the guard's extra prompt is not stored
    assert Completion.objects.filter(checkpoint=incumbent).count() == 3
    assert run.outputs["comparisons"] == Comparison.objects.filter(project=project, reason="battle").count() > 0
    assert run.progress == 1.0 and "sampling 4 prompts on the Ray cluster" in run.log_tail
    assert "sampling on cpu" not in run.log_tail  # nothing was sampled on the worker itself


@on_the_head
def test_a_ppo_run_on_a_cluster_pulls_policy_and_reward_model_from_the_store_and_publishes_there(
        ray, project, annotator, s3_artifacts, s3_client):
    vote_by_rule(project, annotator, 8)
    base = publish_tiny_base(project)
    scorer = publish_tiny_reward_model(project, snapshot_freeze(project=project))
    run = ppo_start(project=project, checkpoint=base, reward_model=scorer, enqueue=False,
                    config={"steps": 2, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 4, "num_threads": 1})
    run_execute(run.pk, ppo_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    assert ray.get_job_info(run.ray_job_id).entrypoint.startswith(
        f"python -m training.remote_job 1 s3://{s3_artifacts}/artifacts/jobs/run-{run.pk}/ppo/spec.json")
    assert len(_jobs_of(ray, run)) == 1 and _status(ray, run) == "SUCCEEDED"
    assert list(RunStep.objects.filter(run=run).values_list("step", flat=True)) == [1, 2]
    checkpoint = run.checkpoint_out
    assert checkpoint.uri == f"s3://{s3_artifacts}/artifacts/checkpoints/{project.slug}/ppo-run-{run.pk}"
    assert checkpoint.meta["reward_model_version"] == scorer.version
    stored = [k.rsplit("/", 1)[-1] for k in keys_in(s3_client, s3_artifacts, checkpoint.uri.split("/", 3)[3])]
    assert {"manifest.json", "model.safetensors"} <= set(stored)
    assert keys_in(s3_client, s3_artifacts, f"artifacts/jobs/run-{run.pk}/") == []  # the staging is gone
    assert f"the Ray node published the checkpoint to {checkpoint.uri}" in run.log_tail  # not through this worker


@on_the_head
def test_a_generation_run_on_a_cluster_without_the_worker_s_disk_samples_stored_checkpoints(
        ray, project, s3_artifacts, s3_client, settings, tmp_path):
    candidate = publish_tiny_base(project, "cand", state=Checkpoint.State.CANDIDATE)
    incumbent = publish_tiny_base(project, "inc")
    another_host(settings, tmp_path, "watcher")  # the worker that submits: nothing of the publisher's cache
    for i in range(2):
        services.prompt_get_or_create(project=project, messages=f"Tell me about topic {i}")
    run = generation_start(project=project, checkpoints=[candidate, incumbent],
                           config={"prompts": 2, "max_new_tokens": 4, "temperature": 1.0}, enqueue=False)
    run_execute(run.pk, generation_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    # Each checkpoint sampled by its own job, then the guard's measurement (the candidate's KL from the
    # project's first checkpoint, the candidate itself: 0), all through the store; the row names the last.
    staged = f"python -m training.remote_job 1 s3://{s3_artifacts}/artifacts/jobs/run-{run.pk}/"
    mine = [j for j in ray.list_jobs() if (j.submission_id or "").startswith(f"flywheel-run-{run.pk}-")]
    parts = [j.entrypoint.removeprefix(staged).split("/")[0] for j in mine]
    assert len(parts) == 3 and set(parts) == {f"generation-c{candidate.pk}", f"generation-c{incumbent.pk}", "guard"}
    assert ray.get_job_info(run.ray_job_id).entrypoint == staged + "guard/spec.json"
    incumbent.refresh_from_db()
    assert isinstance(incumbent.meta["guard"]["kl_from_base"], float)
    # The worker never downloaded a checkpoint: the cluster's node pulled them from the store itself.
    assert not list((Path(settings.ARTIFACTS_CACHE_DIR) / "folders").glob("*/*"))
    assert Completion.objects.filter(checkpoint=candidate).count() == 2
    assert Completion.objects.filter(checkpoint=incumbent).count() == 2
    assert keys_in(s3_client, s3_artifacts, f"artifacts/jobs/run-{run.pk}/") == []  # both jobs' staging is gone


@on_the_head
def test_cancelling_a_run_on_ray_stops_its_job_and_publishes_nothing(ray, project, dpo_inputs, tmp_path):
    run = _dpo(project, dpo_inputs, max_steps=100000)

    def cancel_once_training():
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and not RunStep.objects.filter(run_id=run.pk).exists():
            time.sleep(0.2)
        run_cancel(run=TrainingRun.objects.get(pk=run.pk))

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    run_execute(run.pk, dpo_job)
    canceller.join()
    run.refresh_from_db()
    assert run.state == TrainingRun.State.CANCELLED, run.error
    assert _status(ray, run) == "STOPPED" and "(cancelled)" in run.log_tail
    assert 0 < run.step < 100000
    assert not Checkpoint.objects.filter(project=project, name__startswith="dpo-").exists()
    assert run.checkpoint_out is None
    assert not list((tmp_path / "artifacts" / "checkpoints" / project.slug).glob("dpo-run-*"))


@on_the_head
def test_a_job_that_fails_on_ray_fails_the_run_with_rays_message_and_the_last_error(ray, project, dpo_inputs,
                                                                                   tmp_path):
    base, snapshot = dpo_inputs
    missing = Checkpoint.objects.create(project=project, name="gone", uri=str(tmp_path / "no-such-model"))
    run = dpo_start(project=project, checkpoint=missing, snapshot=snapshot, config={"num_threads": 1}, enqueue=False)
    with pytest.raises(JobFailed, match="failed"):
        run_execute(run.pk, dpo_job)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.FAILED and _status(ray, run) == "FAILED"
    assert f"Ray job {run.ray_job_id} failed" in run.error and "last error:" in run.error
    assert "no-such-model" in run.error or "Error" in run.error.split("last error:")[1]
    assert not Checkpoint.objects.filter(project=project, name__startswith="dpo-").exists()


def _follow_in_a_process(run: TrainingRun, tmp_path: Path) -> subprocess.Popen:
    """The run's task in a worker process of its own (a Celery worker's child, as far as the run can tell)."""
    env = {**os.environ, "DATABASE_URL": database_url(), "ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "RUN_BACKEND": "ray", "RAY_ADDRESS": RAY_ADDRESS, "RAY_GPUS_PER_PROCESS": "0",
           "RAY_CPUS_PER_PROCESS": "1", "DJANGO_SETTINGS_MODULE": "config.settings"}
    code = f"import django; django.setup(); from training.tasks import execute_run; execute_run({run.pk})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "watcher.log", "w"))


@on_the_head
def test_a_watcher_killed_mid_job_is_replaced_without_a_second_job_and_publishes_once(ray, project, dpo_inputs,
                                                                                       tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REATTACH_AFTER", timedelta(seconds=3))
    run = _dpo(project, dpo_inputs, max_steps=60)
    watcher = _follow_in_a_process(run, tmp_path)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and not RunStep.objects.filter(run_id=run.pk).exists():
        assert watcher.poll() is None, (tmp_path / "watcher.log").read_text()
        time.sleep(0.2)
    watcher.send_signal(signal.SIGKILL)  # the Celery worker dies; the Ray job goes on
    watcher.wait()
    run.refresh_from_db()
    assert run.state == TrainingRun.State.RUNNING and run.ray_job_id
    first_job = run.ray_job_id

    from training.tasks import execute_run

    execute_run(run.pk)  # the task delivered again (acks_late): it waits out the heartbeat, then follows the job
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    assert run.ray_job_id == first_job and len(_jobs_of(ray, run)) == 1
    assert "following Ray job" in run.log_tail and run.step == run.total_steps == 60
    assert Checkpoint.objects.filter(produced_by=run).count() == 1
    execute_run(run.pk)  # a late duplicate delivery changes nothing
    assert Checkpoint.objects.filter(project=project, name__startswith="dpo-").count() == 1
