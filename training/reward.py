"""Reward-model training as a run: freeze a snapshot, train, verify, publish a version.

Also the question behind the retrain trigger (``retrain_due``): are there enough new votes since
the last reward model? ``training.loop.retrain_if_due`` asks it after every vote.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from django.db import connection, transaction

from annotate import sql
from annotate.artifacts import folder_publish, staging_path
from annotate.models import Comparison, Project, Snapshot, Vote
from annotate.snapshots import snapshot_freeze, snapshot_path
from rewardmodel.models import RewardModel
from rewardmodel.services import latest_reward_model, reward_model_publish
from training import configs, guards
from training.launch import out_of_process, run_ranks
from training.models import TrainingRun
from training.runs import RunReporter, json_safe, output_url, run_create, run_publishing

KIND = TrainingRun.Kind.REWARD_MODEL


def reward_model_train_job(run: TrainingRun, reporter: RunReporter) -> None:
    """Freeze (or reuse) a snapshot, train on it, verify the saved model loads, then publish."""
    from rewardmodel.lib.data import read_pairs

    config = configs.reward_config(run.config)
    if run.snapshot is None:
        run.snapshot = snapshot_freeze(project=run.project, filters={"for": f"run {run.pk}"})
        run.save(update_fields=["snapshot"])
    snapshot = run.snapshot
    pairs = read_pairs(snapshot_path(snapshot))
    reporter.log(f"snapshot {snapshot.pk}: {len(pairs)} pairs from {snapshot.votes} votes (sha256 {snapshot.sha256[:12]})")
    url = output_url(run)
    tmp = staging_path(url)  # on this host: a GPU worker trains here, then publishes to the store
    try:
        metrics, meta, published = _train_and_verify(run, reporter, config, snapshot, pairs, tmp, url)
        if published:  # a Ray node scored it on the canaries and published it: it never came to this worker
            reporter.log(f"the Ray node published the reward model to {published}")
            url = published
        else:
            folder_publish(tmp, url, progress=reporter.uploading)  # uploaded and verified (or renamed into place) before the row exists
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone once published; a failed run leaves nothing behind
    reporter.log(f"held-out accuracy {metrics.get('eval_accuracy', float('nan')):.3f}")
    if metrics["canary_accuracy"] is not None:
        reporter.log(f"canary accuracy {metrics['canary_accuracy']:.3f} on {metrics['canary_pairs']} frozen pairs "
                     f"({metrics['canary_ties']} ties left out)")
    with run_publishing(run, url):  # this attempt still owns the run: one version, never a second
        run.reward_model_out = reward_model_publish(
            project=run.project,
            snapshot=snapshot,
            backbone=config.backbone,
            artifact_uri=url,
            config=asdict(config),
            metrics=json_safe(metrics),
            pairs=len(pairs),
            code_version=str(meta.get("code_version", "")),
        )
    run.outputs = {"artifact_uri": url, "reward_model_version": run.reward_model_out.version}


def _train_and_verify(run: TrainingRun, reporter: RunReporter, config, snapshot: Snapshot, pairs: list,
                      tmp: Path, url: str) -> tuple[dict, dict, str]:
    """Train into ``tmp`` (in this process, or under torchrun / on Ray), load it back and score it on the
    canary set (held out of every snapshot) before it is published: (metrics, meta.json, the URL a Ray node
    already published it at, else "").

    Out of this process the job itself loads and scores the saved folder (the canaries travel in its
    spec), where its GPU is; on a Ray cluster through the store it also publishes the folder at ``url``
    from the node, so this worker never downloads, loads or uploads the model."""
    from rewardmodel.lib.train import train_reward_model

    world_size = configs.world_size(run.kind, run.config)
    if out_of_process(run, world_size):
        outcome = run_ranks(run, reporter, kind="reward_model", config=config, data=snapshot_path(snapshot, pin=True), out=tmp,
                            world_size=world_size, publish_to=url, snapshot_sha256=snapshot.sha256,
                            canary=guards.canary_set(run.project))
        return outcome["metrics"], outcome["meta"], outcome.get("published", "")
    metrics = train_reward_model(config, pairs, tmp, progress=reporter.progress,
                                 snapshot_sha256=snapshot.sha256).metrics
    # Loaded back before publishing (a row never points at a folder that does not load) and scored.
    metrics.update(guards.canary_metrics(run.project, tmp))
    return metrics, json.loads((tmp / "meta.json").read_text()), ""


def votes_since_last_reward_model(project: Project, *, limit: int) -> int:
    """New votes since the snapshot of the latest reward model, counted up to ``limit`` (cheap)."""
    latest = latest_reward_model(project)
    since = None if latest is None else connection.ops.adapt_datetimefield_value(latest.snapshot.created_at)
    return _count_new_votes(project.pk, since, limit)


# Every vote asks whether a retrain is due, so the question costs two small SQL statements
# (the ORM spent more CPU building the four it took than the database spent answering):
# the project's threshold, whether a retrain is already queued or running, and since when
# votes count as new; then the new votes, counted only up to the threshold.
_DUE = f"""
    SELECT p.retrain_threshold,
           EXISTS (SELECT 1 FROM {TrainingRun._meta.db_table} r
                   WHERE r.project_id = p.id AND r.kind = %s AND r.state IN (%s, %s)),
           (SELECT s.created_at FROM {RewardModel._meta.db_table} m
              JOIN {Snapshot._meta.db_table} s ON s.id = m.snapshot_id
             WHERE m.project_id = p.id AND m.state = %s ORDER BY m.version DESC LIMIT 1)
    FROM {Project._meta.db_table} p WHERE p.id = %s
"""
_NEW_VOTES = f"""
    SELECT COUNT(*) FROM (SELECT 1 FROM {Vote._meta.db_table} v
                            JOIN {Comparison._meta.db_table} c ON c.id = v.comparison_id
                           WHERE c.project_id = %s {{since}} LIMIT %s) AS new_votes
"""


def _count_new_votes(project_id: int, since, limit: int) -> int:
    """Votes in the project created after ``since`` (None: all), counted up to ``limit``."""
    # ``since`` goes back to the database as it came out of it (SQLite hands raw SQL text).
    query = _NEW_VOTES.format(since="" if since is None else "AND v.created_at > %s")
    return sql.value(query, [project_id] + ([] if since is None else [since]) + [limit])


def retrain_due(project_id: int) -> int | None:
    """The new votes (counted up to the threshold) when the project is due a retrain, else None.

    Due: automatic retraining is on (threshold > 0), no reward-model run is queued or running,
    and at least the threshold of votes arrived since the latest reward model's snapshot.
    """
    row = sql.row(_DUE, [KIND, TrainingRun.State.QUEUED, TrainingRun.State.RUNNING, RewardModel.State.PUBLISHED,
                         project_id])
    if row is None or not row[0] or row[1]:  # no such project, retraining off, or one pending
        return None
    threshold, _, since = row
    new_votes = _count_new_votes(project_id, since, threshold)
    return new_votes if new_votes >= threshold else None


ACTIVE_ENSEMBLE_SIZE = 4


def reward_model_start(
    *, project: Project, config: dict | None = None, reason: str = "started by hand", enqueue: bool = True
) -> TrainingRun:
    """Validate the config, then create a run, queued unless ``enqueue`` is False (raises ValueError naming a bad setting).

    A project that selects pairs by BALD needs heads that can disagree: unless the config says otherwise, its
    reward models train ``ACTIVE_ENSEMBLE_SIZE`` bootstrap heads (one head would rank like ``uncertainty``).
    """
    config = dict(config or {})
    if project.selection == "bald":
        config.setdefault("ensemble_size", ACTIVE_ENSEMBLE_SIZE)
    configs.validate(KIND, config)
    with transaction.atomic():
        return run_create(project=project, kind=KIND, config=config, reason=reason, enqueue=enqueue)

