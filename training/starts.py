"""Start any kind of run by hand (commands, API, console) with the loop's defaults filled in."""
from __future__ import annotations

from annotate.models import Checkpoint, Project, Vote
from annotate.snapshots import snapshot_freeze
from rewardmodel.services import latest_reward_model
from training.generation import generation_start
from training.loop import incumbent
from training.models import TrainingRun
from training.policy import dpo_config_from, dpo_start, ppo_start
from training.reward import reward_model_start

Kind = TrainingRun.Kind


def _checkpoint(project: Project, name: str | None) -> Checkpoint:
    if name:
        checkpoint = Checkpoint.objects.filter(project=project, name=name).first()
        if checkpoint is None:
            raise ValueError(f"no checkpoint named {name!r} in {project.slug}")
        return checkpoint
    found = incumbent(project)
    if found is None:
        raise ValueError(f"{project.slug} has no incumbent checkpoint; name one")
    return found


def run_start(
    *,
    project: Project,
    kind: str,
    config: dict | None = None,
    checkpoint: str | None = None,
    rivals: list[str] | None = None,
    prompts: int | None = 64,
    reason: str = "started by hand",
    enqueue: bool = True,
) -> TrainingRun:
    """Create a run of ``kind``; ValueError says what is missing or invalid.

    dpo: improves ``checkpoint`` (default: the incumbent) on the latest reward model's
    snapshot, or on a fresh snapshot when there is no reward model yet. ppo: against the
    latest reward model. generation: samples ``checkpoint`` and battles it against
    ``rivals`` (default: the incumbent, when it is another checkpoint).
    """
    config = config or {}
    if kind == Kind.REWARD_MODEL:
        return reward_model_start(project=project, config=config, reason=reason, enqueue=enqueue)
    if kind == Kind.DPO:
        base = _checkpoint(project, checkpoint)
        dpo_config_from(config, model=base.uri or "unset")  # refuse bad settings before freezing anything
        rm = latest_reward_model(project)
        if rm is None and not Vote.objects.filter(comparison__project=project).exists():
            raise ValueError(f"{project.slug} has no votes to train on yet")
        snapshot = rm.snapshot if rm else snapshot_freeze(project=project, filters={"for": "dpo"})
        return dpo_start(project=project, checkpoint=base, snapshot=snapshot,
                         config=config, reason=reason, enqueue=enqueue)
    if kind == Kind.PPO:
        rm = latest_reward_model(project)
        if rm is None:
            raise ValueError(f"{project.slug} has no reward model yet: train one before PPO")
        return ppo_start(project=project, checkpoint=_checkpoint(project, checkpoint), reward_model=rm,
                         config=config, reason=reason, enqueue=enqueue)
    if kind == Kind.GENERATION:
        first = _checkpoint(project, checkpoint)
        others = [_checkpoint(project, name) for name in rivals or []]
        if rivals is None:
            others = [c for c in [incumbent(project)] if c is not None and c.pk != first.pk]
        return generation_start(project=project, checkpoints=[first, *others], prompts=prompts, sampling=config,
                                reason=reason, enqueue=enqueue)
    raise ValueError(f"kind must be one of {', '.join(Kind.values)}, not {kind!r}")
