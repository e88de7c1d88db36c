"""The flywheel: reward model → policy update → generation → comparisons, and round by round.

``after_run`` is called when any run succeeds; when the project's loop is enabled
it starts the next stage. ``run_rounds`` drives whole rounds in the foreground
(``manage.py run_loop --sync``), optionally with an oracle voting on the battles.

Rounds compound: before each policy update the loop promotes the newest candidate the leaderboard's
rule allows (``promote_if_due``; on when ``LoopSettings.auto_promote`` is, and
always for ``run_loop`` unless told not to), and the update starts from the incumbent and, with
``train_on = "new"``, trains on the votes since the snapshot the incumbent was trained on, not on the
whole history again (``policy_snapshot``). The snapshot's ``filters`` and the run's reason record which.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction

from annotate.exports import export_vote_count
from annotate.models import Checkpoint, Project, Snapshot
from annotate.snapshots import snapshot_freeze
from rewardmodel.services import latest_reward_model
from training import guards
from training.checkpoints import (
    PEOPLE,
    PEOPLE_AND_SIMULATED,
    Leaderboard,
    checkpoint_promote,
    leaderboard,
    promotion_verdict,
)
from training.jobs import job_for_kind
from training.models import LoopSettings, TrainingRun
from training.reward import retrain_due, votes_since_last_reward_model
from training.runs import run_execute
from training.simulate import simulate_votes
from training.starts import run_start

Kind = TrainingRun.Kind

# Fewer new votes than this since the incumbent's snapshot and a policy update trains on the whole
# snapshot instead: a handful of pairs would only add noise to a model that already learned the rest.
MIN_NEW_VOTES = 16


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


def battle_votes_of(board: Leaderboard, checkpoint: Checkpoint) -> int:
    entry = board.entry(checkpoint.pk)
    return entry.rating.games if entry and entry.rating else 0


@dataclass(frozen=True)
class AutoPromotion:
    promoted: Checkpoint | None
    why: str  # one sentence: what was promoted, or why nothing was


def promote_if_due(project: Project, *, sources=PEOPLE, force: bool = False) -> AutoPromotion:
    """The loop's own promotion: the newest candidate that the button's rule allows, with at least
    ``LoopSettings.promote_min_votes`` battle votes, and that the reward-hacking guard does not flag.

    Does nothing unless the project's ``auto_promote`` is on (``force``: ``run_loop``'s default). A refusal by
    the guard is written on the checkpoint (``meta["auto_promotion"]``) so the console can say why it waits.
    """
    settings = LoopSettings.objects.filter(project=project).first()
    if not force and not (settings and settings.auto_promote):
        return AutoPromotion(None, "Automatic promotion is off.")
    min_votes = settings.promote_min_votes if settings else LoopSettings._meta.get_field("promote_min_votes").default
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        board = leaderboard(project, sources=sources)
        candidates = [e.checkpoint for e in board.entries
                      if e.checkpoint.state == Checkpoint.State.CANDIDATE and e.rating is not None]
        candidates.sort(key=lambda c: (c.created_at, c.pk), reverse=True)
        reasons = []
        for checkpoint in candidates:
            votes = battle_votes_of(board, checkpoint)
            if votes < min_votes:
                reasons.append(f"{checkpoint.name} has {votes} of {min_votes} battle votes")
                continue
            allowed, why = promotion_verdict(board, checkpoint)
            if not allowed:
                reasons.append(why)
                continue
            flag = guards.checkpoint_flag(checkpoint)
            if flag:
                checkpoint.meta = {**checkpoint.meta, "auto_promotion": {"refused": flag}}
                checkpoint.save(update_fields=["meta"])
                reasons.append(f"{checkpoint.name} is flagged: {flag}")
                continue
            checkpoint_promote(checkpoint=checkpoint, by=None, sources=sources, board=board)
            return AutoPromotion(checkpoint, f"{checkpoint.name} promoted: {why}")
    return AutoPromotion(None, "; ".join(reasons) or "No candidate has battle votes yet.")



def trained_on(checkpoint: Checkpoint) -> Snapshot | None:
    """The snapshot whose votes trained ``checkpoint``: its DPO run's, or its PPO run's reward model's (None for
    a checkpoint no run here produced, such as the base model)."""
    run = (TrainingRun.objects.filter(checkpoint_out=checkpoint)
           .select_related("snapshot", "reward_model_in__snapshot").first())
    if run is None:
        return None
    return run.snapshot or (run.reward_model_in.snapshot if run.reward_model_in else None)


def policy_snapshot(project: Project, settings: LoopSettings, whole: Snapshot) -> tuple[Snapshot, str]:
    """The snapshot a DPO update from the incumbent trains on, and a phrase saying which it is.

    ``train_on = "new"``: the votes since the snapshot the incumbent was trained on (a new snapshot, filtered
    ``after`` that snapshot's time, so that round N costs what round 1 did, not N times as much); the whole
    snapshot ``whole`` when the incumbent was not trained here, when fewer than ``MIN_NEW_VOTES`` votes are
    new, or with ``train_on = "all"``.
    """
    if settings.train_on == "all":
        return whole, "the whole snapshot (train on: all votes)"
    incumbent = Checkpoint.objects.incumbent(project)
    since = trained_on(incumbent) if incumbent else None
    if since is None:
        return whole, f"the whole snapshot ({incumbent.name if incumbent else 'the base'} was not trained here)"
    # A vote recorded while that snapshot was being written may fall on either side of its time.
    filters = {"after": since.created_at.isoformat(), "sources": list(project.training_sources), "for": "dpo",
               "note": f"votes since snapshot {since.pk}, which {incumbent.name} was trained on"}
    new = export_vote_count(project=project, filters=filters)
    if new < MIN_NEW_VOTES:
        return whole, f"the whole snapshot (only {new} votes since {incumbent.name}'s snapshot {since.pk})"
    return snapshot_freeze(project=project, filters=filters), f"{new} votes since {incumbent.name}'s snapshot {since.pk}"


def policy_start(*, project: Project, reason: str, enqueue: bool = True, sources=PEOPLE,
                 force_promotion: bool = False) -> TrainingRun:
    """Queue the project's policy update from the incumbent: DPO on the votes the incumbent has not learned from
    (``policy_snapshot``), or PPO against the latest reward model. The newest candidate that clears the
    promotion rule becomes the incumbent first (``promote_if_due``), so each round builds on the last winner."""
    settings = loop_settings(project)
    rm = latest_reward_model(project)
    if rm is None:
        raise ValueError(f"project {project.slug} has no reward model yet")
    promote_if_due(project, sources=sources, force=force_promotion)
    kind = Kind.PPO if settings.method == LoopSettings.Method.PPO else Kind.DPO
    if kind == Kind.PPO:
        inputs, data = {"reward_model": rm}, f"reward model v{rm.version}"
    else:
        snapshot, data = policy_snapshot(project, settings, rm.snapshot)
        inputs = {"snapshot": snapshot}
    return run_start(project=project, kind=kind, config=settings.policy_config, reason=f"{reason}; trains on {data}"[:200],
                     enqueue=enqueue, **inputs)


def battle_start(*, project: Project, candidate: Checkpoint, reason: str, enqueue: bool = True) -> TrainingRun:
    """Queue the candidate's battle against the incumbent on the project's battle prompts."""
    settings = loop_settings(project)
    return run_start(project=project, kind=Kind.GENERATION, checkpoint=candidate,
                     config={**settings.sampling, "prompts": settings.battle_prompts}, reason=reason,
                     enqueue=enqueue)


def next_stage(run: TrainingRun, *, enqueue: bool = True, sources=PEOPLE,
               force_promotion: bool = False) -> TrainingRun | None:
    """The run that follows a succeeded run in the loop, created (and queued unless ``enqueue`` is False)."""
    if run.kind == Kind.REWARD_MODEL and run.reward_model_out_id:
        return policy_start(project=run.project, reason=f"reward model v{run.reward_model_out.version} published",
                            enqueue=enqueue, sources=sources, force_promotion=force_promotion)
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
    parent: str = ""  # the checkpoint the policy update started from
    trained_on: str = ""  # the run's reason: which votes it learned from
    promotion: str = ""  # after the round's votes: what the loop promoted, or why nothing
    policy_seconds: float | None = None

Stage = Callable[[str, TrainingRun], None]


def run_rounds(
    *, project: Project, rounds: int, oracle=None, votes_per_round: int = 0, on_stage: Stage | None = None,
    echo: Callable[[int, int, dict], None] | None = None, auto_promote: bool = True,
) -> list[RoundResult]:
    """Whole rounds in the foreground: retrain → policy update → battle, then the oracle votes on the battle and
    the loop promotes by the leaderboard's rule (``auto_promote``; an oracle's simulated votes count as people's).
    """
    sources = PEOPLE_AND_SIMULATED if oracle is not None else PEOPLE
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
            run = next_stage(run, enqueue=False, sources=sources, force_promotion=auto_promote)
            if run is not None:
                chain.append(run)
        cast = 0
        if oracle is not None and votes_per_round:
            cast = simulate_votes(project=project, votes=votes_per_round, oracle=oracle, seed=number).votes
        promotion = (promote_if_due(project, sources=sources, force=auto_promote) if auto_promote
                     else AutoPromotion(None, "automatic promotion is off"))
        rm_run, policy_run, battle_run = (chain + [None, None])[:3]
        results.append(
            RoundResult(
                round=number,
                reward_model=rm_run.reward_model_out.version,
                checkpoint=policy_run.checkpoint_out.name if policy_run else "",
                comparisons=(battle_run.outputs or {}).get("comparisons", 0) if battle_run else 0,
                votes=cast,
                parent=policy_run.checkpoint_in.name if policy_run else "",
                trained_on=policy_run.reason if policy_run else "",
                promotion=promotion.why,
                policy_seconds=policy_run.duration_s if policy_run else None,
            )
        )
    return results
