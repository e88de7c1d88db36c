"""A worker, or its whole host, dies mid-run: the run fails at once with a clear error when a worker
starts on that host again, nothing partial is published or left in the store, and the retry
publishes exactly once. Also: an upload reports its progress, and a cancel stops it part way."""
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
from training.models import TrainingRun
from training.policy import dpo_job, dpo_start, output_url
from training.runs import RunCancelled, run_execute, runs_reap_dead_here
from training.starts import run_retry

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


def test_a_run_whose_process_is_gone_fails_at_once_and_its_partial_upload_is_removed(
        project, inputs, s3_artifacts, s3_client, tmp_path):
    host = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _running(project, *inputs, worker=host, worker_pid=_dead_pid())
        live = _running(project, *inputs, worker=host, worker_pid=alive.pid)
        elsewhere = _running(project, *inputs, worker="gpu-host-2", worker_pid=_dead_pid())
        on_ray = _running(project, *inputs, worker=host, worker_pid=_dead_pid(), ray_job_id="flywheel-run-9-x")
        # What the dead process had sent before it died: files, no manifest.
        prefix = output_url(dead).removeprefix(f"s3://{s3_artifacts}/")
        s3_client.put_object(Bucket=s3_artifacts, Key=f"{prefix}/config.json", Body=b"{}")
        s3_client.put_object(Bucket=s3_artifacts, Key=f"{prefix}/model-00001-of-00002.safetensors", Body=b"\0" * 1024)
        cut = s3_client.create_multipart_upload(Bucket=s3_artifacts, Key=f"{prefix}/model-00002-of-00002.safetensors")
        s3_client.upload_part(Bucket=s3_artifacts, Key=cut["Key"], UploadId=cut["UploadId"], PartNumber=1,
                              Body=b"\0" * (5 << 20))

        assert runs_reap_dead_here() == [dead.pk]
    finally:
        alive.kill()
    dead.refresh_from_db()
    assert dead.state == TrainingRun.State.FAILED and dead.finished_at is not None
    assert f"pid {dead.worker_pid} on {host}) is gone, at step 3 of 5" in dead.error
    assert "nothing was published" in dead.error and "Retry" in dead.error
    assert keys_in(s3_client, s3_artifacts, prefix) == []
    assert not s3_client.list_multipart_uploads(Bucket=s3_artifacts, Prefix=prefix).get("Uploads")
    for run in (live, elsewhere, on_ray):
        run.refresh_from_db()
        assert run.state == TrainingRun.State.RUNNING, run.pk
    assert runs_reap_dead_here() == []  # a second worker starting finds nothing more to do


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


def _start_worker(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu", "--pool", "solo",
         "--loglevel", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait(run: TrainingRun, until, timeout_s: float, log: Path) -> TrainingRun:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if until(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run.pk} is {run.state} at step {run.step}: {run.error}\n{log.read_text()[-3000:]}")


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_run_fails_it_when_the_host_is_back_and_the_retry_publishes_once(
        celery_broker, tmp_path, settings, project, annotator, worker_env):
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
    worker = _start_worker(env, log)
    try:
        with transaction.atomic():
            run = dpo_start(project=project, checkpoint=base, snapshot=snapshot,
                            config={"batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "max_steps": 400})
        run = _wait(run, lambda r: r.state == TrainingRun.State.RUNNING and r.step >= 2, 120, log)
        assert run.worker == socket.gethostname() and run.worker_pid == worker.pid
        os.killpg(worker.pid, signal.SIGKILL)  # the host goes down: the worker and all it started
        worker.wait()
        time.sleep(1)
        run.refresh_from_db()
        assert run.state == TrainingRun.State.RUNNING and not Checkpoint.objects.filter(name__startswith="dpo-").exists()

        started = time.monotonic()
        worker = _start_worker(env, log)  # the host is back; its worker starts
        run = _wait(run, lambda r: r.finished, 60, log)
        assert run.state == TrainingRun.State.FAILED and f"(pid {run.worker_pid} on " in run.error, run.error
        assert time.monotonic() - started < 60  # not STALE_AFTER (15 minutes)
        assert not Path(artifacts.local_path(output_url(run))).exists()

        run.config = {**run.config, "max_steps": 3}
        run.save(update_fields=["config"])
        with transaction.atomic():
            retry = run_retry(run=run)
        retry = _wait(retry, lambda r: r.finished, 180, log)
        assert retry.state == TrainingRun.State.SUCCEEDED, retry.error
        assert list(Checkpoint.objects.filter(name__startswith="dpo-").values_list("name", flat=True)) == [
            f"dpo-r{retry.pk}"]
        assert (Path(artifacts.local_path(retry.checkpoint_out.uri)) / "model.safetensors").exists()
        run.refresh_from_db()
        assert run.state == TrainingRun.State.FAILED  # a task delivered again never revived it
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
