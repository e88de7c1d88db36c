"""The one way to start a run of any kind: the console, the API, the commands and the loop call ``run_start``.

Inputs a caller leaves out are filled in the same way for everyone: the policy to improve or
sample is the incumbent; DPO learns from the latest reward model's snapshot (or a fresh one
when there is no reward model yet); PPO optimises against the latest reward model; a generation
run battles its candidate against the incumbent. Settings left out come from
``training.configs.run_defaults``. Every refusal is a ValueError whose message is shown as it is.
"""
from __future__ import annotations

from annotate.models import Checkpoint, Project, Snapshot, Vote
from annotate.snapshots import snapshot_freeze
from rewardmodel.models import RewardModel
from rewardmodel.services import latest_reward_model
from training import configs
from training.generation import generation_start, settings_of
from training.models import TrainingRun
from training.policy import dpo_start, ppo_start
from training.reward import reward_model_start

Kind = TrainingRun.Kind


def _policy(project: Project, checkpoint: Checkpoint | None) -> Checkpoint:
    if checkpoint is not None:
        return checkpoint
    found = Checkpoint.objects.incumbent(project)
    if found is None:
        raise ValueError(f"{project.slug} has no incumbent checkpoint: choose the checkpoint to use")
    return found


def _dpo_snapshot(project: Project, config: dict) -> Snapshot:
    configs.validate(Kind.DPO, config)  # refuse bad settings before freezing anything
    rm = latest_reward_model(project)
    if rm is not None:
        return rm.snapshot
    if not Vote.objects.filter(comparison__project=project).exists():
        raise ValueError(f"{project.slug} has no votes to train on yet")
    return snapshot_freeze(project=project, filters={"for": "dpo"})


def _ppo_reward_model(project: Project) -> RewardModel:
    rm = latest_reward_model(project)
    if rm is None:
        raise ValueError(f"{project.slug} has no reward model yet: train one before PPO")
    return rm


def run_start(
    *,
    project: Project,
    kind: str,
    config: dict | None = None,
    checkpoint: Checkpoint | None = None,
    snapshot: Snapshot | None = None,
    reward_model: RewardModel | None = None,
    rivals: list[Checkpoint] | None = None,
    reason: str = "started by hand",
    enqueue: bool = True,
) -> TrainingRun:
    """Create a run of ``kind``, queued on the ``gpu`` queue once the transaction commits (unless ``enqueue`` is False).

    ``checkpoint`` is the policy to improve (DPO, PPO) or the candidate to sample (generation);
    ``rivals`` (generation) are sampled on the same prompts and battled against it.
    """
    config = dict(config or {})
    reason = reason.strip() or "started by hand"
    if kind == Kind.REWARD_MODEL:
        return reward_model_start(project=project, config=config, reason=reason, enqueue=enqueue)
    if kind == Kind.DPO:
        base = _policy(project, checkpoint)
        snapshot = snapshot or _dpo_snapshot(project, config)
        return dpo_start(project=project, checkpoint=base, snapshot=snapshot, config=config, reason=reason,
                         enqueue=enqueue)
    if kind == Kind.PPO:
        base = _policy(project, checkpoint)
        return ppo_start(project=project, checkpoint=base, reward_model=reward_model or _ppo_reward_model(project),
                         config=config, reason=reason, enqueue=enqueue)
    if kind == Kind.GENERATION:
        candidate = _policy(project, checkpoint)
        if rivals is None:
            rivals = [c for c in [Checkpoint.objects.incumbent(project)] if c is not None and c.pk != candidate.pk]
        if any(rival.pk == candidate.pk for rival in rivals):
            raise ValueError(f"{candidate.name} is the candidate; it cannot also be its own rival")
        return generation_start(project=project, checkpoints=[candidate, *rivals], config=config, reason=reason,
                                enqueue=enqueue)
    raise ValueError(f"kind must be one of {', '.join(Kind.values)}, not {kind!r}")


def inputs_by_name(
    project: Project,
    *,
    checkpoint: str | None = None,
    rivals: list[str] | None = None,
    snapshot: int | None = None,
    reward_model: int | None = None,
) -> dict:
    """``run_start``'s inputs from what the API and the commands name: checkpoint names, a snapshot id, a reward-model version."""
    inputs: dict = {}
    if checkpoint is not None:
        inputs["checkpoint"] = _checkpoint_named(project, checkpoint)
    if rivals is not None:
        inputs["rivals"] = [_checkpoint_named(project, name) for name in rivals]
    if snapshot is not None:
        inputs["snapshot"] = Snapshot.objects.filter(project=project, pk=snapshot).first()
        if inputs["snapshot"] is None:
            raise ValueError(f"no snapshot {snapshot} in {project.slug}")
    if reward_model is not None:
        inputs["reward_model"] = RewardModel.objects.filter(
            project=project, version=reward_model, state=RewardModel.State.PUBLISHED
        ).first()
        if inputs["reward_model"] is None:
            raise ValueError(f"no published reward model v{reward_model} in {project.slug}")
    return inputs


def _checkpoint_named(project: Project, name: str) -> Checkpoint:
    found = Checkpoint.objects.filter(project=project, name=name).first()
    if found is None:
        raise ValueError(f"no checkpoint named {name!r} in {project.slug}")
    return found


def run_retry(*, run: TrainingRun, enqueue: bool = True) -> TrainingRun:
    """A new run with the same kind, settings and inputs as a finished one.

    A reward-model retry freezes a fresh snapshot (the votes there are now), as the first run
    did when it started without one.
    """
    if not run.finished:
        raise ValueError(f"run {run.pk} is still {run.state}; cancel it before retrying")
    reason = f"retry of run {run.pk}"
    if run.kind == Kind.GENERATION:
        ids = run.config.get("checkpoints") or []
        by_id = {c.pk: c for c in Checkpoint.objects.filter(project_id=run.project_id, pk__in=ids)}
        if not ids or any(i not in by_id for i in ids):
            raise ValueError(f"a checkpoint that run {run.pk} sampled no longer exists")
        first, *rivals = [by_id[i] for i in ids]
        return run_start(project=run.project, kind=run.kind, config=settings_of(run.config), checkpoint=first,
                         rivals=rivals, reason=reason, enqueue=enqueue)
    return run_start(
        project=run.project, kind=run.kind, config=run.config, reason=reason, enqueue=enqueue,
        checkpoint=run.checkpoint_in, snapshot=run.snapshot, reward_model=run.reward_model_in,
    )
