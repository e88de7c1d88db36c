"""The one way to start a run of any kind: the console, the API, the commands and the loop call ``run_start``.

Inputs a caller leaves out are filled in the same way for everyone (``default_inputs``, which the
console's forms show too): the policy to improve is the incumbent; DPO learns from the latest
reward model's snapshot (or a fresh one when there is no reward model yet); PPO optimises against
the latest reward model; a generation run samples the newest candidate (else the incumbent) and
battles it against the incumbent. Settings left out come from ``training.configs.run_defaults``.
Every refusal is a ValueError whose message is shown as it is.
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


# Which inputs each kind takes; any other is refused rather than ignored.
INPUTS = {
    Kind.REWARD_MODEL: (),
    Kind.DPO: ("checkpoint", "snapshot"),
    Kind.PPO: ("checkpoint", "reward_model"),
    Kind.GENERATION: ("checkpoint", "rivals"),
}


def default_inputs(project: Project, kind: str) -> dict:
    """The inputs a run of ``kind`` gets when its starter names none (read by the console's forms too).

    ``snapshot`` None for DPO means a fresh snapshot of the votes, frozen when the run starts.
    """
    incumbent = Checkpoint.objects.incumbent(project)
    rm = latest_reward_model(project)
    if kind == Kind.DPO:
        return {"checkpoint": incumbent, "snapshot": rm and rm.snapshot}
    if kind == Kind.PPO:
        return {"checkpoint": incumbent, "reward_model": rm}
    if kind == Kind.GENERATION:
        candidate = Checkpoint.objects.newest_candidate(project) or incumbent
        return {"checkpoint": candidate, "rivals": _rivals_of(candidate, incumbent)}
    return {}


def _rivals_of(candidate: Checkpoint | None, incumbent: Checkpoint | None) -> list[Checkpoint]:
    """A candidate battles the incumbent, unless it is the incumbent."""
    return [incumbent] if incumbent is not None and candidate is not None and candidate.pk != incumbent.pk else []


def _fresh_snapshot(project: Project, config: dict) -> Snapshot:
    configs.validate(Kind.DPO, config)  # refuse bad settings before freezing anything
    if not Vote.objects.filter(comparison__project=project).exists():
        raise ValueError(f"{project.slug} has no votes to train on yet")
    return snapshot_freeze(project=project, filters={"for": "dpo"})


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
    if kind not in INPUTS:
        raise ValueError(f"kind must be one of {', '.join(Kind.values)}, not {kind!r}")
    given = {"checkpoint": checkpoint, "snapshot": snapshot, "reward_model": reward_model, "rivals": rivals}
    foreign = [name for name, value in given.items() if value is not None and name not in INPUTS[kind]]
    if foreign:
        raise ValueError(f"a {Kind(kind).label} run takes no {' or '.join(foreign)}")
    inputs = {**default_inputs(project, kind), **{k: v for k, v in given.items() if v is not None}}
    if kind == Kind.GENERATION and rivals is None:
        inputs["rivals"] = _rivals_of(inputs["checkpoint"], Checkpoint.objects.incumbent(project))
    config = dict(config or {})
    reason = reason.strip() or "started by hand"
    if kind == Kind.REWARD_MODEL:
        return reward_model_start(project=project, config=config, reason=reason, enqueue=enqueue)
    base = inputs["checkpoint"]
    if base is None:
        raise ValueError(f"{project.slug} has no incumbent checkpoint: choose the checkpoint to use")
    if kind == Kind.DPO:
        snapshot = inputs["snapshot"] or _fresh_snapshot(project, config)
        return dpo_start(project=project, checkpoint=base, snapshot=snapshot, config=config, reason=reason,
                         enqueue=enqueue)
    if kind == Kind.PPO:
        if inputs["reward_model"] is None:
            raise ValueError(f"{project.slug} has no reward model yet: train one before PPO")
        return ppo_start(project=project, checkpoint=base, reward_model=inputs["reward_model"], config=config,
                         reason=reason, enqueue=enqueue)
    rivals = inputs["rivals"]
    if any(rival.pk == base.pk for rival in rivals):
        raise ValueError(f"{base.name} is the candidate; it cannot also be its own rival")
    if len({rival.pk for rival in rivals}) < len(rivals):
        raise ValueError("a rival is named twice")
    return generation_start(project=project, checkpoints=[base, *rivals], config=config, reason=reason,
                            enqueue=enqueue)


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
    if checkpoint:  # "" names none, as it always did
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
        checkpoint=run.checkpoint_in, reward_model=run.reward_model_in,
        snapshot=None if run.kind == Kind.REWARD_MODEL else run.snapshot,  # the first run's own freeze
    )
