"""Policy runs: DPO from a snapshot or PPO against a reward model, each publishing a candidate checkpoint.

The libraries write the checkpoint folder atomically (temporary folder, verified
load, rename) into a local staging folder; ``annotate.artifacts.folder_publish`` then
moves it under ``ARTIFACTS_URL`` (a rename, or an upload verified against its manifest),
and only then is the Checkpoint row inserted, so a row never points at a half-written
or half-uploaded folder. Inputs (the parent checkpoint, the reward model, the snapshot)
are pulled into this host's cache first.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotate.artifacts import folder_publish, model_reference, model_source, staging_path
from annotate.events import event_emit
from annotate.models import Checkpoint, Project, Prompt, Snapshot
from annotate.snapshots import snapshot_path
from rewardmodel.models import RewardModel
from training import configs
from training.launch import out_of_process, run_ranks
from training.models import TrainingRun
from training.ray_jobs import on_ray
from training.runs import RunReporter, json_safe, output_url, run_create, run_publishing


@contextmanager
def _staged(run: TrainingRun) -> Iterator[Path]:
    """The local folder the job writes its checkpoint into; removed afterwards, published or not."""
    out = staging_path(output_url(run))
    try:
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)  # a folder no row will ever point at


def _lineage(run: TrainingRun) -> dict:
    return {
        "run": run.pk,
        "kind": run.kind,
        "project": run.project.slug,
        "parent_checkpoint": run.checkpoint_in and run.checkpoint_in.name,
        "snapshot_sha256": run.snapshot and run.snapshot.sha256,
        "reward_model_version": run.reward_model_in and run.reward_model_in.version,
    }


def _publish(run: TrainingRun, reporter: RunReporter, out: Path, config, metrics: dict, published: str = "") -> Checkpoint:
    """Publish the finished folder ``out`` (unless a Ray node already `published` it), then insert its row."""
    if published:
        reporter.log(f"the Ray node published the checkpoint to {published}")
    url = published or folder_publish(out, output_url(run), progress=reporter.uploading)
    with run_publishing(run, url):  # this attempt still owns the run: one row, never a second
        checkpoint = Checkpoint.objects.create(
            project=run.project,
            name=f"{run.kind}-r{run.pk}",
            parent=run.checkpoint_in,
            uri=url,
            state=Checkpoint.State.CANDIDATE,
            meta={**_lineage(run), "config": json_safe(asdict(config)), "metrics": json_safe(metrics)},
        )
    run.checkpoint_out = checkpoint
    run.outputs = {"checkpoint": checkpoint.name, "artifact_uri": checkpoint.uri}
    event_emit(project_id=run.project_id, type="checkpoint.published", data={
        "checkpoint": checkpoint.pk, "name": checkpoint.name, "run": run.pk, "uri": checkpoint.uri,
        "parent": run.checkpoint_in and run.checkpoint_in.name})
    return checkpoint


def _source(run: TrainingRun):
    """How the run's job names its input models: on a Ray cluster a stored model by its URL (the node pulls
    it; this worker never downloads it), here a local folder."""
    return model_reference if on_ray(run) else model_source


def dpo_job(run: TrainingRun, reporter: RunReporter) -> None:
    from rewardmodel.lib.data import read_pairs
    from training.lib.dpo import train_dpo

    config = configs.dpo_config(run.config, model=_source(run)(run.checkpoint_in.uri))
    world_size = configs.world_size(run.kind, run.config)
    data = snapshot_path(run.snapshot, pin=True)
    pairs = read_pairs(data)
    reporter.log(f"DPO on {len(pairs)} pairs of snapshot {run.snapshot.pk}, from {run.checkpoint_in.name}")
    with _staged(run) as out:
        if out_of_process(run, world_size):
            result = run_ranks(run, reporter, kind="dpo", config=config, data=data, out=out, world_size=world_size,
                               publish_to=output_url(run), lineage=_lineage(run))
            _publish(run, reporter, out, config, result["metrics"], result.get("published", ""))
        else:
            metrics = train_dpo(config, pairs, out, progress=reporter.progress, lineage=_lineage(run)).metrics
            _publish(run, reporter, out, config, metrics)


def ppo_job(run: TrainingRun, reporter: RunReporter) -> None:
    from training.lib.ppo import train_ppo

    source = _source(run)
    config = configs.ppo_config(run.config, model=source(run.checkpoint_in.uri),
                                reward=source(run.reward_model_in.artifact_uri))
    prompts = Prompt.objects.filter(project=run.project).order_by("id").values_list("messages", flat=True)
    limit = configs.ppo_prompt_limit(run.config)
    prompts = list(prompts[:limit] if limit else prompts)
    reporter.log(f"PPO on {len(prompts)} prompts against reward model v{run.reward_model_in.version}")
    world_size = configs.world_size(run.kind, run.config)
    with _staged(run) as out:
        if out_of_process(run, world_size):
            data = Path(settings.ARTIFACTS_DIR) / "jobs" / f"run-{run.pk}" / "prompts.json"
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_text(json.dumps(prompts))
            result = run_ranks(run, reporter, kind="ppo", config=config, data=data, out=out, world_size=world_size,
                               publish_to=output_url(run), lineage=_lineage(run))
            _publish(run, reporter, out, config, result["metrics"], result.get("published", ""))
        else:
            metrics = train_ppo(config, prompts, out, progress=reporter.progress, lineage=_lineage(run)).metrics
            _publish(run, reporter, out, config, metrics)


def dpo_start(
    *, project: Project, checkpoint: Checkpoint, snapshot: Snapshot, config: dict | None = None,
    reason: str = "started by hand", enqueue: bool = True,
) -> TrainingRun:
    """Validate, then queue a DPO run improving ``checkpoint`` on ``snapshot`` (ValueError names a bad setting)."""
    configs.validate(TrainingRun.Kind.DPO, config or {})
    with transaction.atomic():
        return run_create(project=project, kind=TrainingRun.Kind.DPO, config=config or {}, reason=reason,
                          enqueue=enqueue, checkpoint_in=checkpoint, snapshot=snapshot)


def ppo_start(
    *, project: Project, checkpoint: Checkpoint, reward_model: RewardModel, config: dict | None = None,
    reason: str = "started by hand", enqueue: bool = True,
) -> TrainingRun:
    """Validate, then queue a PPO run improving ``checkpoint`` against ``reward_model``."""
    configs.validate(TrainingRun.Kind.PPO, config or {})
    with transaction.atomic():
        return run_create(project=project, kind=TrainingRun.Kind.PPO, config=config or {}, reason=reason,
                          enqueue=enqueue, checkpoint_in=checkpoint, reward_model_in=reward_model)
