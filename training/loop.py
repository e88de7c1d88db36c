"""The flywheel: reward model → policy update → generation → comparisons, and round by round.

``after_run`` is called when any run succeeds; when the project's loop is enabled
it starts the next stage. ``run_rounds`` drives whole rounds in the foreground
(``manage.py run_loop --sync``), optionally with an oracle voting on the battles.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction

from annotate.models import Checkpoint, Project
from rewardmodel.services import latest_reward_model
from training.jobs import job_for_kind
from training.models import LoopSettings, TrainingRun
from training.reward import retrain_due, votes_since_last_reward_model
from training.runs import run_execute
from training.simulate import simulate_votes
from training.starts import run_start

Kind = TrainingRun.Kind


def loop_settings(project: Project) -> LoopSettings:
    return LoopSettings.objects.get_or_create(project=project)[0]


def retrain_if_due(*, project_id: int) -> TrainingRun | None:
    """Queue a reward-model run when the project has enough new votes and none is pending (after every vote)."""
    new_votes = retrain_due(project_id)
    if new_votes is None:
        return None
    with transaction.atomic():
        # The project row lock makes "at most one pending retrain" hold across processes.
        project = Project.objects.select_for_update().get(pk=project_id)
        if TrainingRun.objects.active().filter(project=project, kind=Kind.REWARD_MODEL).exists():
            return None
        return run_start(project=project, kind=Kind.REWARD_MODEL,
                         reason=f"{new_votes}+ new votes since the last reward model")


def policy_start(*, project: Project, reason: str, enqueue: bool = True) -> TrainingRun:
    """Queue the project's policy update: DPO on the latest reward model's snapshot, or PPO against it."""
    settings = loop_settings(project)
    rm = latest_reward_model(project)
    if rm is None:
        raise ValueError(f"project {project.slug} has no reward model yet")
    kind = Kind.PPO if settings.method == LoopSettings.Method.PPO else Kind.DPO
    inputs = {"reward_model": rm} if kind == Kind.PPO else {"snapshot": rm.snapshot}
    return run_start(project=project, kind=kind, config=settings.policy_config, reason=reason, enqueue=enqueue,
                     **inputs)


def battle_start(*, project: Project, candidate: Checkpoint, reason: str, enqueue: bool = True) -> TrainingRun:
    """Queue the candidate's battle against the incumbent on the project's battle prompts."""
    settings = loop_settings(project)
    return run_start(project=project, kind=Kind.GENERATION, checkpoint=candidate,
                     config={**settings.sampling, "prompts": settings.battle_prompts}, reason=reason,
                     enqueue=enqueue)


def next_stage(run: TrainingRun, *, enqueue: bool = True) -> TrainingRun | None:
    """The run that follows a succeeded run in the loop, created (and queued unless ``enqueue`` is False)."""
    if run.kind == Kind.REWARD_MODEL and run.reward_model_out_id:
        return policy_start(project=run.project, reason=f"reward model v{run.reward_model_out.version} published",
                            enqueue=enqueue)
    if run.kind in (Kind.DPO, Kind.PPO) and run.checkpoint_out_id:
        return battle_start(project=run.project, candidate=run.checkpoint_out,
                            reason=f"new candidate {run.checkpoint_out.name}", enqueue=enqueue)
    return None


def after_run(run: TrainingRun) -> TrainingRun | None:
    """Called when a run succeeds: advance the loop if the project asked for it."""
    if not loop_settings(run.project).enabled:
        return None
    return next_stage(run)


def loop_status(project: Project) -> str:
    """One sentence for the dashboard: what runs next and why."""
    settings = loop_settings(project)
    active = TrainingRun.objects.active().filter(project=project).order_by("created_at").first()
    if active:
        return f"{active.get_kind_display()} run {active.pk} is {active.state}: {active.reason or 'started by hand'}."
    if not settings.enabled:
        return "The loop is off: managers start each stage by hand."
    wanted = project.retrain_threshold
    if wanted == 0:
        return "The loop is on, but automatic retraining is off (retrain threshold 0)."
    have = votes_since_last_reward_model(project, limit=wanted)
    return (
        f"Waiting for votes: {have} of {wanted} new votes before the next reward model, then "
        f"{settings.get_method_display()} and a checkpoint battle."
    )


@dataclass(frozen=True)
class RoundResult:
    round: int
    reward_model: int
    checkpoint: str
    comparisons: int
    votes: int


Stage = Callable[[str, TrainingRun], None]


def run_rounds(
    *, project: Project, rounds: int, oracle=None, votes_per_round: int = 0, on_stage: Stage | None = None,
    echo: Callable[[int, int, dict], None] | None = None,
) -> list[RoundResult]:
    """Whole rounds in the foreground: retrain → policy update → battle, then the oracle votes on the battle."""
    results = []
    for number in range(1, rounds + 1):
        run = run_start(project=project, kind=Kind.REWARD_MODEL, reason=f"run_loop round {number}", enqueue=False)
        chain = [run]
        while run is not None:
            if on_stage:
                on_stage(f"round {number}: {run.get_kind_display()}", run)
            run_execute(run.pk, job_for_kind(run.kind), echo=echo)
            run.refresh_from_db()
            if run.state != TrainingRun.State.SUCCEEDED:
                raise RuntimeError(f"round {number}: run {run.pk} ended {run.state}: {run.error[-500:]}")
            run = next_stage(run, enqueue=False)
            if run is not None:
                chain.append(run)
        cast = 0
        if oracle is not None and votes_per_round:
            cast = simulate_votes(project=project, votes=votes_per_round, oracle=oracle, seed=number).votes
        rm_run, policy_run, battle_run = (chain + [None, None])[:3]
        results.append(
            RoundResult(
                round=number,
                reward_model=rm_run.reward_model_out.version,
                checkpoint=policy_run.checkpoint_out.name if policy_run else "",
                comparisons=(battle_run.outputs or {}).get("comparisons", 0) if battle_run else 0,
                votes=cast,
            )
        )
    return results
