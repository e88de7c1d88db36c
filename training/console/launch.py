"""Starting and retrying runs from the console, through the same services as the API and the loop.

Reward-model and generation runs start with ``training.reward.reward_model_start`` and
``training.generation.generation_start``; DPO and PPO with ``training.policy.dpo_start`` /
``ppo_start``, imported only when needed so that the console works (minus those two kinds)
in an installation without the policy module. Every refusal is a ValueError whose message is
shown to the manager as it is.
"""
from __future__ import annotations

from annotate.models import Checkpoint, Project, Snapshot
from rewardmodel.models import RewardModel
from training.generation import SAMPLING_KEYS, generation_start
from training.models import TrainingRun
from training.reward import reward_model_start

Kind = TrainingRun.Kind


class PolicyUnavailable(ValueError):
    """DPO and PPO cannot start here: ``training.policy`` could not be imported."""


def policy_services():
    """``(dpo_start, ppo_start)``; raises PolicyUnavailable with the reason when they are missing."""
    try:
        from training.policy import dpo_start, ppo_start
    except ImportError as error:
        raise PolicyUnavailable(
            f"DPO and PPO runs cannot be started from this installation: the policy module is missing ({error})."
        ) from None
    return dpo_start, ppo_start


def policy_unavailable_reason() -> str:
    """Empty when DPO and PPO can start, else the sentence to show on the form."""
    try:
        policy_services()
    except PolicyUnavailable as error:
        return str(error)
    return ""


def run_start(
    *,
    project: Project,
    kind: str,
    config: dict | None = None,
    reason: str = "",
    enqueue: bool = True,
    checkpoint: Checkpoint | None = None,
    snapshot: Snapshot | None = None,
    reward_model: RewardModel | None = None,
    rivals: list[Checkpoint] | None = None,
    prompts: int | None = None,
) -> TrainingRun:
    """Queue a run of ``kind``; ``checkpoint`` is the policy to improve (DPO, PPO) or the candidate to sample (generation)."""
    config = dict(config or {})
    reason = reason.strip() or "started from the console"
    if kind == Kind.REWARD_MODEL:
        return reward_model_start(project=project, config=config, reason=reason, enqueue=enqueue)
    if kind == Kind.GENERATION:
        if checkpoint is None:
            raise ValueError("choose the checkpoint to sample")
        return generation_start(
            project=project, checkpoints=[checkpoint, *(rivals or [])], prompts=prompts, sampling=config,
            reason=reason, enqueue=enqueue,
        )
    if kind in (Kind.DPO, Kind.PPO):
        dpo_start, ppo_start = policy_services()
        if checkpoint is None:
            raise ValueError("choose the checkpoint to improve")
        if kind == Kind.DPO:
            if snapshot is None:
                raise ValueError("choose the dataset snapshot to train on")
            return dpo_start(project=project, checkpoint=checkpoint, snapshot=snapshot, config=config,
                             reason=reason, enqueue=enqueue)
        if reward_model is None:
            raise ValueError("choose the reward model to optimise against")
        return ppo_start(project=project, checkpoint=checkpoint, reward_model=reward_model, config=config,
                         reason=reason, enqueue=enqueue)
    raise ValueError(f"unknown kind of run {kind!r}")


def run_retry(*, run: TrainingRun, enqueue: bool = True) -> TrainingRun:
    """A new run with the same kind, settings and inputs as a finished one.

    A reward-model retry freezes a fresh snapshot (the votes there are now), as the first run
    did when it started without one.
    """
    if not run.finished:
        raise ValueError(f"run {run.pk} is still {run.state}; cancel it before retrying")
    config = dict(run.config)
    reason = f"retry of run {run.pk}"
    if run.kind == Kind.GENERATION:
        ids = config.get("checkpoints") or []
        by_id = {c.pk: c for c in Checkpoint.objects.filter(project_id=run.project_id, pk__in=ids)}
        if not ids or any(i not in by_id for i in ids):
            raise ValueError(f"a checkpoint that run {run.pk} sampled no longer exists")
        first, *rivals = [by_id[i] for i in ids]
        return run_start(
            project=run.project, kind=run.kind, config={k: config[k] for k in SAMPLING_KEYS if k in config},
            reason=reason, enqueue=enqueue, checkpoint=first, rivals=rivals, prompts=config.get("prompts"),
        )
    return run_start(
        project=run.project, kind=run.kind, config=config, reason=reason, enqueue=enqueue,
        checkpoint=run.checkpoint_in, snapshot=run.snapshot, reward_model=run.reward_model_in,
    )
