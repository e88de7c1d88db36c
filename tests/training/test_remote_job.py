"""A job for a cluster that shares no disk with the worker: staged in the S3-compatible store, run where the
worker's files are gone, and collected back through the store (``training.remote_job``; no Ray needed)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from annotate import artifacts
from annotate.models import Checkpoint
from annotate.snapshots import snapshot_freeze, snapshot_path
from tests.store import KEYS, another_host, keys_in, publish_tiny_base
from tests.tiny import save_tiny_llama
from tests.training.test_reward_runs import vote_by_rule
from training import configs, ray_jobs
from training.lib.distributed import JobFailed
from training.policy import dpo_start
from training.runs import json_safe

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def _node(settings, tmp_path: Path, spec_url: str, world_size: int = 1) -> subprocess.CompletedProcess:
    """Run the job as a cluster node would: its own working directory and cache, the store's settings only."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "ARTIFACTS_DIR")}
    env.update(ray_jobs.runtime_env()["env_vars"], PYTHONPATH=str(ROOT), ARTIFACTS_CACHE_DIR=str(tmp_path / "node-cache"),
               AWS_ACCESS_KEY_ID=KEYS["aws_access_key_id"], AWS_SECRET_ACCESS_KEY=KEYS["aws_secret_access_key"])
    workdir = tmp_path / "node-job"
    workdir.mkdir()
    return subprocess.run([sys.executable, "-m", "training.remote_job", str(world_size), spec_url], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=240)


def test_a_dpo_job_staged_in_the_store_trains_on_a_node_without_the_worker_s_disk(
        settings, tmp_path, project, annotator, s3_artifacts, s3_client):
    vote_by_rule(project, annotator, 16)
    base = publish_tiny_base(project)
    snapshot = snapshot_freeze(project=project)
    run = dpo_start(project=project, checkpoint=base, snapshot=snapshot, enqueue=False,
                    config={"batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "max_steps": 2})
    another_host(settings, tmp_path, "worker")  # the worker pulls the base as dpo_job does
    config = configs.dpo_config(run.config, model=artifacts.model_source(base.uri))
    spec = {"kind": "dpo", "config": json_safe(asdict(config)), "data": str(snapshot_path(snapshot)),
            "out": "unused", "lineage": {"run": run.pk}}
    spec_url = ray_jobs.stage(run, spec, "dpo")
    staged = json.loads(s3_client.get_object(Bucket=s3_artifacts, Key=spec_url.split("/", 3)[3])["Body"].read())
    assert staged["store"]["models"] == {"model": base.uri}  # the node pulls the base from the store itself
    assert staged["store"]["data"]["sha256"] == snapshot.sha256

    shutil.rmtree(tmp_path / "worker")  # nothing on the worker's disk is the node's to read
    done = _node(settings, tmp_path, spec_url)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("PROGRESS ") == 2
    prefix = f"artifacts/jobs/run-{run.pk}/dpo"
    assert {f"{prefix}/result.json", f"{prefix}/out/manifest.json", f"{prefix}/out/model.safetensors"} <= set(
        keys_in(s3_client, s3_artifacts, prefix))

    another_host(settings, tmp_path, "worker-2")
    out = tmp_path / "worker-2" / "staging" / "out"
    result = ray_jobs.collect(run, "dpo", out)
    assert result["out"] == str(out) and result["metrics"]["optimizer_steps"] == 2
    assert (out / "model.safetensors").is_file() and json.loads((out / "meta.json").read_text())["lineage"]["run"] == run.pk
    artifacts.artifact_delete(ray_jobs.staged_url(run, "dpo"))
    assert keys_in(s3_client, s3_artifacts, prefix) == []


def test_a_job_whose_data_was_tampered_with_in_the_store_fails_on_the_node_and_leaves_no_result(
        settings, tmp_path, project, annotator, s3_artifacts, s3_client):
    vote_by_rule(project, annotator, 8)
    snapshot = snapshot_freeze(project=project)
    base = Checkpoint.objects.create(project=project, name="base", state=Checkpoint.State.INCUMBENT,
                                     uri=str(save_tiny_llama(tmp_path / "base", chat=True)))
    run = dpo_start(project=project, checkpoint=base, snapshot=snapshot, enqueue=False, config={"max_steps": 1})
    spec = {"kind": "dpo", "config": json_safe(asdict(configs.dpo_config(run.config, model=base.uri))),
            "data": str(snapshot_path(snapshot)), "out": "unused"}
    spec_url = ray_jobs.stage(run, spec, "dpo")
    s3_client.put_object(Bucket=s3_artifacts, Key=f"artifacts/jobs/run-{run.pk}/dpo/data.jsonl", Body=b"{}\n")
    done = _node(settings, tmp_path, spec_url)
    assert done.returncode != 0 and "is corrupt: its sha256 is" in done.stderr
    with pytest.raises(JobFailed, match="left no result in the store"):
        ray_jobs.collect(run, "dpo", tmp_path / "out")
