"""Reward-model training as a run: freeze a snapshot, train, verify, publish a version.

Also the retrain trigger: enough new votes since the last reward model queue one
retrain, at most one queued or running per project.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, fields
from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotate.models import Project, Vote
from annotate.snapshots import snapshot_freeze, snapshot_path
from rewardmodel.models import RewardModel
from rewardmodel.services import latest_reward_model, reward_model_publish
from training.models import TrainingRun
from training.runs import RunReporter, run_create

KIND = TrainingRun.Kind.REWARD_MODEL


def json_safe(value):
    """Metrics as JSON can store them: NaN and infinities (e.g. accuracy of an empty bucket) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def default_config() -> dict:
    return {"backbone": settings.REWARD_BACKBONE, "epochs": 1.0, "batch_size": 16, "max_length": 384}


def reward_config_from(run_config: dict):
    """A RewardConfig from a run's JSON config; unknown keys are an error that names them."""
    from rewardmodel.lib.config import RewardConfig

    known = {f.name for f in fields(RewardConfig)}
    merged = {**default_config(), **run_config}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"unknown reward-model settings: {', '.join(unknown)}")
    return RewardConfig(**merged)


def reward_model_train_job(run: TrainingRun, reporter: RunReporter) -> None:
    """Freeze (or reuse) a snapshot, train on it, verify the saved model loads, then publish."""
    from rewardmodel.lib.data import read_pairs
    from rewardmodel.lib.model import load_reward_model
    from rewardmodel.lib.train import train_reward_model

    config = reward_config_from(run.config)
    if run.snapshot is None:
        run.snapshot = snapshot_freeze(project=run.project, filters={"for": f"run {run.pk}"})
        run.save(update_fields=["snapshot"])
    snapshot = run.snapshot
    pairs = read_pairs(snapshot_path(snapshot))
    reporter.log(f"snapshot {snapshot.pk}: {len(pairs)} pairs from {snapshot.votes} votes (sha256 {snapshot.sha256[:12]})")
    folder = Path(settings.ARTIFACTS_DIR) / "reward_models" / run.project.slug
    tmp, final = folder / f".tmp-run-{run.pk}", folder / f"run-{run.pk}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    result = train_reward_model(config, pairs, tmp, progress=reporter.progress, snapshot_sha256=snapshot.sha256)
    load_reward_model(tmp)  # verify before publishing: a row never points at a folder that does not load
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    meta = json.loads((final / "meta.json").read_text())
    reporter.log(f"held-out accuracy {result.metrics.get('eval_accuracy', float('nan')):.3f}")
    run.reward_model_out = reward_model_publish(
        project=run.project,
        snapshot=snapshot,
        backbone=config.backbone,
        artifact_uri=final.as_uri(),
        config=asdict(config),
        metrics=json_safe(result.metrics),
        pairs=len(pairs),
        code_version=str(meta.get("code_version", "")),
    )
    run.outputs = {"artifact_uri": final.as_uri(), "reward_model_version": run.reward_model_out.version}


def votes_since_last_reward_model(project: Project, *, limit: int) -> int:
    """New votes since the snapshot of the latest reward model, counted up to ``limit`` (cheap)."""
    latest = latest_reward_model(project)
    votes = Vote.objects.filter(comparison__project=project)
    if latest is not None:
        votes = votes.filter(created_at__gt=latest.snapshot.created_at)
    return votes.order_by()[:limit].count()


def retrain_if_due(*, project_id: int) -> TrainingRun | None:
    """Queue a reward-model run when the project has enough new votes and none is pending."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None or project.retrain_threshold == 0:
        return None
    if TrainingRun.objects.active().filter(project=project, kind=KIND).exists():
        return None
    new_votes = votes_since_last_reward_model(project, limit=project.retrain_threshold)
    if new_votes < project.retrain_threshold:
        return None
    with transaction.atomic():
        # The project row lock makes "at most one pending retrain" hold across processes.
        Project.objects.select_for_update().get(pk=project.pk)
        if TrainingRun.objects.active().filter(project=project, kind=KIND).exists():
            return None
        return run_create(
            project=project,
            kind=KIND,
            config={},
            reason=f"{new_votes}+ new votes since the last reward model",
        )


def reward_model_start(
    *, project: Project, config: dict | None = None, reason: str = "started by hand", enqueue: bool = True
) -> TrainingRun:
    """Validate the config, then create a run, queued unless ``enqueue`` is False (raises ValueError naming a bad setting)."""
    try:
        reward_config_from(config or {})
    except TypeError as error:
        raise ValueError(str(error)) from None
    with transaction.atomic():
        return run_create(project=project, kind=KIND, config=config or {}, reason=reason, enqueue=enqueue)


__all__ = ["RewardModel", "reward_model_start", "reward_model_train_job", "retrain_if_due"]
