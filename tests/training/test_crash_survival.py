"""A worker, or its whole host, dies mid-run: the run starts again by itself as its next attempt (at
once when a worker starts on that host again), publishes exactly once, and fails with a clear error
after its last attempt; nothing partial is published or left in the store, and a process presumed
lost that wakes up publishes nothing. Also: the heartbeat while a job is busy, upload progress, and a
cancel mid-upload."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import transaction

from annotate import artifacts
from annotate.models import Checkpoint
from annotate.snapshots import snapshot_freeze
from tests.store import keys_in
from tests.tiny import save_tiny_llama
from tests.training.test_reward_runs import vote_by_rule
from tests.training.test_worker import ROOT, database_url
from training import runs
from training.models import TrainingRun
from training.policy import dpo_job, dpo_start
from training.reward import reward_model_start
from training.runs import RunCancelled, output_url, run_execute, runs_reap_dead_here

pytestmark = pytest.mark.timeout(300)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running(project, base, snapshot, **fields) -> TrainingRun:
    run = dpo_start(project=project, checkpoint=base, snapshot=snapshot, config={"max_steps": 5}, enqueue=False)
    TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.RUNNING, step=3, total_steps=5, **fields)
    run.refresh_from_db()
    return run


@pytest.fixture
def inputs(project, annotator, tmp_path):
    vote_by_rule(project, annotator, 16)
    base = Checkpoint.objects.create(project=project, name="base", uri=str(save_tiny_llama(tmp_path / "base", chat=True)),
                                     state=Checkpoint.State.INCUMBENT)
    return base, snapshot_freeze(project=project)


def test_a_run_whose_process_is_gone_starts_again_at_once_and_its_partial_upload_is_removed(
        project, inputs, s3_artifacts, s3_client, tmp_path, settings, monkeypatch,
        django_capture_on_commit_callbacks):
    sent: list[int] = []
    monkeypatch.setattr(runs, "run_enqueue", sent.append)
    host = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _running(project, *inputs, worker=host, worker_pid=_dead_pid())
        last = _running(project, *inputs, worker=host, worker_pid=_dead_pid(), attempt=settings.RUN_MAX_ATTEMPTS)
        live = _running(project, *inputs, worker=host, worker_pid=alive.pid)
        elsewhere = _running(project, *inputs, worker="gpu-host-2", worker_pid=_dead_pid())
        on_ray = _running(project, *inputs, worker=host, worker_pid=_dead_pid(), ray_job_id="flywheel-run-9-x")
        # What the dead process had sent before it died: files, a multipart upload cut off, no manifest.
        prefix = output_url(dead).removeprefix(f"s3://{s3_artifacts}/")
        s3_client.put_object(Bucket=s3_artifacts, Key=f"{prefix}/config.json", Body=b"{}")
        s3_client.put_object(Bucket=s3_artifacts, Key=f"{prefix}/model-00001-of-00002.safetensors", Body=b"\0" * 1024)
        cut = s3_client.create_multipart_upload(Bucket=s3_artifacts, Key=f"{prefix}/model-00002-of-00002.safetensors")
        s3_client.upload_part(Bucket=s3_artifacts, Key=cut["Key"], UploadId=cut["UploadId"], PartNumber=1,
                              Body=b"\0" * (5 << 20))
        with django_capture_on_commit_callbacks(execute=True):
            assert sorted(runs_reap_dead_here()) == sorted([dead.pk, last.pk])
    finally:
        alive.kill()
    dead_pid = dead.worker_pid
    dead.refresh_from_db()
    assert (dead.state, dead.attempt, dead.step, dead.worker_pid) == (TrainingRun.State.QUEUED, 2, 0, None)
    assert f"attempt 1 lost: the worker process running it (pid {dead_pid} on {host}) is gone, at step 3 of 5" in (
        dead.log_tail) and "starting again from the beginning (attempt 2 of 3)" in dead.log_tail
    assert sent == [dead.pk]  # sent to the queue again, once
    assert output_url(dead).endswith(f"dpo-run-{dead.pk}-a2")  # the new attempt publishes elsewhere
    assert keys_in(s3_client, s3_artifacts, prefix) == []
    assert not s3_client.list_multipart_uploads(Bucket=s3_artifacts, Prefix=prefix).get("Uploads")
    last.refresh_from_db()
    assert last.state == TrainingRun.State.FAILED and "is gone, at step 3 of 5" in last.error
    assert "nothing was published" in last.error and "attempt 3 of 3" in last.error and "retry the run" in last.error
    for run in (live, elsewhere, on_ray):
        run.refresh_from_db()
        assert run.state == TrainingRun.State.RUNNING, run.pk
    assert runs_reap_dead_here() == []  # a second worker starting finds nothing more to do


def test_a_process_presumed_lost_that_wakes_up_publishes_nothing(project, inputs, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    base, snapshot = inputs
    run = dpo_start(project=project, checkpoint=base, snapshot=snapshot, enqueue=False,
                    config={"batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "max_steps": 1})

    def presumed_lost_meanwhile(run, reporter):
        # While this process trains, a reaper finds its heartbeat stale and queues attempt 2.
        TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.QUEUED, attempt=2)
        dpo_job(run, reporter)

    assert run_execute(run.pk, presumed_lost_meanwhile) is None
    assert not Checkpoint.objects.filter(name__startswith="dpo-").exists()
    assert not artifacts.local_path(output_url(run)).exists()  # what it uploaded is removed
    run.refresh_from_db()
    assert (run.state, run.attempt, run.checkpoint_out) == (TrainingRun.State.QUEUED, 2, None)  # left to attempt 2


@pytest.mark.django_db(transaction=True)
def test_a_busy_job_keeps_its_heartbeat_fresh(project, monkeypatch):
    monkeypatch.setattr(runs, "HEARTBEAT_S", 0.2)
    run = reward_model_start(project=project, enqueue=False)
    beats = []

    def busy(run, reporter):  # loading a model, evaluating: no progress to report for a while
        for _ in range(6):
            time.sleep(0.25)
            beats.append(TrainingRun.objects.values_list("heartbeat_at", flat=True).get(pk=run.pk))

    run_execute(run.pk, busy)
    assert len(set(beats)) >= 3  # refreshed while the job reported nothing


def test_a_publish_reports_its_upload_and_a_cancel_mid_upload_leaves_nothing(
        project, inputs, s3_artifacts, s3_client, tmp_path):
    base, snapshot = inputs
    run = dpo_start(project=project, checkpoint=base, snapshot=snapshot, enqueue=False,
                    config={"batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "max_steps": 1})
    run = run_execute(run.pk, dpo_job)
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    lines = [line for line in run.log_tail.splitlines() if line.startswith("uploading the output")]
    assert lines and lines[-1].endswith("(100%)"), run.log_tail

    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("a.bin", "b.bin", "c.bin"):
        (folder / name).write_bytes(os.urandom(1 << 20))
    seen: list[tuple[int, int]] = []

    def cancel_after_the_first_file(sent: int, total: int) -> None:
        seen.append((sent, total))
        if sent >= 1 << 20:
            raise RunCancelled("cancelled mid-upload")

    url = artifacts.artifact_url("checkpoints", "demo", "cancelled")
    with pytest.raises(RunCancelled):
        artifacts.folder_publish(folder, url, progress=cancel_after_the_first_file)
    assert seen and all(total == 3 << 20 for _, total in seen) and seen[-1][0] < 3 << 20
    assert keys_in(s3_client, s3_artifacts, "artifacts/checkpoints/demo/cancelled") == []


def _start_worker(env: dict, log: Path, pool: str = "solo") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu", "--pool", pool,
         "--concurrency", "1", "--loglevel", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait(run: TrainingRun, until, timeout_s: float, log: Path) -> TrainingRun:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if until(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run.pk} is {run.state} at step {run.step}: {run.error}\n{log.read_text()[-3000:]}")


@pytest.fixture
def real_worker(celery_broker, tmp_path, settings, project, annotator, worker_env):
    """Start real worker processes on this test's database and broker; a DPO run's inputs; stop them after."""
    from config.celery import app

    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    vote_by_rule(project, annotator, 16)
    base = Checkpoint.objects.create(project=project, name="base", state=Checkpoint.State.INCUMBENT,
                                     uri=str(save_tiny_llama(tmp_path / "base", chat=True)))
    snapshot = snapshot_freeze(project=project)
    app.control.purge()
    env = {**os.environ, **celery_broker, "DATABASE_URL": database_url(), "ARTIFACTS_DIR": str(settings.ARTIFACTS_DIR),
           "PYTHONUNBUFFERED": "1", **worker_env}
    log = tmp_path / "worker.log"
    started: list[subprocess.Popen] = []

    def start(pool: str = "solo") -> subprocess.Popen:
        started.append(_start_worker(env, log, pool))
        return started[-1]

    def dpo() -> TrainingRun:
        with transaction.atomic():
            run = dpo_start(project=project, checkpoint=base, snapshot=snapshot,
                            config={"batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "max_steps": 300})
        return _wait(run, lambda r: r.state == TrainingRun.State.RUNNING and r.step >= 2, 120, log)

    yield start, dpo, log
    for worker in started:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)


def _published_once(run: TrainingRun, log: Path) -> None:
    run = _wait(run, lambda r: r.finished, 240, log)
    assert run.state == TrainingRun.State.SUCCEEDED and run.attempt == 2, f"{run.state}: {run.error}"
    assert "attempt 1 lost: the worker process running it (pid" in run.log_tail
    assert list(Checkpoint.objects.filter(name__startswith="dpo-").values_list("name", "uri")) == [
        (f"dpo-r{run.pk}", artifacts.artifact_url("checkpoints", run.project.slug, f"dpo-run-{run.pk}-a2"))]
    assert (artifacts.local_path(run.checkpoint_out.uri) / "model.safetensors").exists()
    first = artifacts.artifact_url("checkpoints", run.project.slug, f"dpo-run-{run.pk}")
    assert not artifacts.local_path(first).exists()
    assert run.steps.count() == run.total_steps == 300  # the second attempt's steps, each once


@pytest.mark.django_db(transaction=True)
def test_a_host_that_goes_down_mid_run_restarts_the_run_when_it_is_back_and_it_publishes_once(real_worker):
    start, dpo, log = real_worker
    worker = start()
    run = dpo()
    assert run.worker == socket.gethostname() and run.worker_pid == worker.pid
    os.killpg(worker.pid, signal.SIGKILL)  # the host goes down: the worker and all it started
    worker.wait()
    time.sleep(1)
    run.refresh_from_db()
    assert run.state == TrainingRun.State.RUNNING and not Checkpoint.objects.filter(name__startswith="dpo-").exists()

    begun = time.monotonic()
    start()  # the host is back; its worker starts and finds the run's process gone
    _wait(run, lambda r: r.attempt == 2 and r.state == TrainingRun.State.RUNNING, 60, log)
    assert time.monotonic() - begun < 60  # at once, not after RUN_LOST_AFTER_S
    _published_once(run, log)


@pytest.mark.django_db(transaction=True)
def test_a_pool_process_killed_mid_run_is_redelivered_and_the_run_restarts_at_once(real_worker):
    start, dpo, log = real_worker
    worker = start("prefork")
    run = dpo()
    assert run.worker_pid != worker.pid  # a child of the worker runs it
    begun = time.monotonic()
    os.kill(run.worker_pid, signal.SIGKILL)  # the pool process dies; the worker lives and gets the task again
    _wait(run, lambda r: r.attempt == 2 and r.state == TrainingRun.State.RUNNING, 60, log)
    assert time.monotonic() - begun < 30
    _published_once(run, log)


def test_a_run_this_very_process_executes_is_not_taken_for_lost(project, inputs, settings, tmp_path):
    # A solo-pool worker runs the job in its main thread and checks for lost runs from another thread
    # of the same process: the run's pid is its own, and the run is alive.
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    run = reward_model_start(project=project, enqueue=False)
    found: list[list[int]] = []

    def job(run, reporter):
        found.append(runs_reap_dead_here(enqueue=False))

    run_execute(run.pk, job)
    run.refresh_from_db()
    assert found == [[]] and run.attempt == 1 and run.state == TrainingRun.State.SUCCEEDED
