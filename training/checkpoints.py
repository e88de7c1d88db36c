"""The checkpoint leaderboard and promotion to incumbent.

Checkpoints are ranked by a Bradley–Terry fit (``training.lib.ranking``) on the *human* votes of
checkpoint-battle comparisons: a vote for A is a win for A's checkpoint, a tie or "both bad" is
half a win each. A candidate may replace the incumbent only when its 95% interval clears the
incumbent's (candidate lower bound above incumbent upper bound); otherwise a manager must give a
reason, which is recorded with the intervals of the moment on a ``Promotion`` row.

Automatic promotion (``training.loop.promote_if_due``, ``LoopSettings.auto_promote``) applies the same
rule with no override: a candidate with at least ``promote_min_votes`` battle votes whose interval clears
the incumbent's is promoted by the loop, unless the reward-hacking guard (``training.guards``) flags it.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, F

from annotate.events import event_emit
from annotate.models import Checkpoint, Comparison, Project, Vote
from training.lib.ranking import Ranking, Rating, rank
from training.models import Promotion, TrainingRun

# Whose battle votes rate checkpoints: people. A simulated loop (``run_loop --oracle``) passes its simulated
# annotators too, since they stand in for the people of a real project; AI-judge votes never rate.
PEOPLE = (Vote.Source.HUMAN,)
PEOPLE_AND_SIMULATED = (Vote.Source.HUMAN, Vote.Source.SIMULATED)

OUTCOME = {Vote.Choice.A: 1.0, Vote.Choice.B: 0.0, Vote.Choice.TIE: 0.5, Vote.Choice.BOTH_BAD: 0.5}
SEED = 0  # the page and the promotion check draw the same bootstrap, so they always agree


class PromotionRefused(ValueError):
    """A promotion the rule does not allow; the message says why and what would allow it."""


@dataclass(frozen=True)
class Entry:
    checkpoint: Checkpoint
    rating: Rating | None
    run: TrainingRun | None  # the run that produced it (lineage), if any
    rank: int | None


@dataclass(frozen=True)
class Leaderboard:
    entries: list[Entry]  # rated best first, then unrated newest first
    ranking: Ranking
    incumbent: Checkpoint | None

    @property
    def rated(self) -> list[Entry]:
        return [e for e in self.entries if e.rating is not None]

    @property
    def unrated(self) -> list[Entry]:
        return [e for e in self.entries if e.rating is None]

    def entry(self, checkpoint_id: int) -> Entry | None:
        return next((e for e in self.entries if e.checkpoint.pk == checkpoint_id), None)

    def incumbent_entry(self) -> Entry | None:
        return self.entry(self.incumbent.pk) if self.incumbent else None


def battle_counts(project: Project, *, sources=PEOPLE) -> list[tuple[int, int, float, int]]:
    """``(checkpoint_a, checkpoint_b, outcome, votes)`` from the project's battle votes of ``sources`` (people by
    default): one GROUP BY."""
    rows = (
        Vote.objects.filter(
            comparison__project=project, comparison__reason=Comparison.Reason.BATTLE, source__in=sources
        )
        .exclude(comparison__state=Comparison.State.REMOVED)  # a manager upheld a flag: in no count or export
        .exclude(comparison__completion_a__checkpoint_id=F("comparison__completion_b__checkpoint_id"))
        .values_list("comparison__completion_a__checkpoint_id", "comparison__completion_b__checkpoint_id", "choice")
        .annotate(n=Count("id"))
        .order_by()
    )
    return [(a, b, OUTCOME[choice], n) for a, b, choice, n in rows]


def leaderboard(project: Project, *, rounds: int = 100, sources=PEOPLE) -> Leaderboard:
    """Every checkpoint of the project with its rating (if it has battle votes) and lineage. Two queries."""
    ranking = rank(battle_counts(project, sources=sources), rounds=rounds, seed=SEED)
    checkpoints = list(
        Checkpoint.objects.filter(project=project)
        .select_related("parent", "produced_by", "produced_by__snapshot", "produced_by__reward_model_in")
        .newest_first()
    )
    ratings = {r.name: (position, r) for position, r in enumerate(ranking.ratings, start=1)}
    entries = []
    for checkpoint in checkpoints:
        position, rating = ratings.get(checkpoint.pk, (None, None))
        entries.append(Entry(checkpoint, rating, getattr(checkpoint, "produced_by", None), position))
    entries.sort(key=lambda e: (e.rank is None, e.rank or 0))
    # Checkpoint.objects.incumbent's rule (the newest incumbent), applied to the rows already loaded.
    incumbents = [c for c in checkpoints if c.state == Checkpoint.State.INCUMBENT]
    return Leaderboard(entries, ranking, incumbents[0] if incumbents else None)


def promotion_verdict(board: Leaderboard, checkpoint: Checkpoint) -> tuple[bool, str]:
    """Whether the interval rule allows promoting ``checkpoint`` now, and a sentence saying why."""
    if board.incumbent is None:
        return True, "There is no incumbent yet: any checkpoint may become the first."
    if board.incumbent.pk == checkpoint.pk:
        return False, f"{checkpoint.name} is already the incumbent."
    entry, held = board.entry(checkpoint.pk), board.incumbent_entry()
    if entry is None or entry.rating is None:
        return False, f"{checkpoint.name} has no human battle votes yet, so it has no interval to compare."
    if held is None or held.rating is None:
        return False, f"The incumbent {board.incumbent.name} has no human battle votes, so there is nothing to clear."
    mine, theirs = entry.rating, held.rating
    if mine.lower > theirs.upper:
        return True, (
            f"{checkpoint.name}'s interval ({mine.lower:.0f}–{mine.upper:.0f}) clears the incumbent's "
            f"({theirs.lower:.0f}–{theirs.upper:.0f})."
        )
    return False, (
        f"{checkpoint.name}'s 95% interval ({mine.lower:.0f}–{mine.upper:.0f}) does not clear the incumbent "
        f"{board.incumbent.name}'s ({theirs.lower:.0f}–{theirs.upper:.0f}): more battle votes would settle it."
    )


def checkpoint_promote(*, checkpoint: Checkpoint, by, override_reason: str = "", sources=PEOPLE,
                       board: Leaderboard | None = None) -> Promotion:
    """Make ``checkpoint`` the project's incumbent; the previous incumbent is retired.

    Allowed when its interval clears the incumbent's (see ``promotion_verdict``), or with a
    non-empty ``override_reason``, which is recorded. Raises PromotionRefused otherwise, and
    always for the checkpoint that already is the incumbent. ``by`` None is the loop itself
    (``training.loop.promote_if_due``), which never overrides; ``board`` is a leaderboard its caller read under the same
    project lock.
    """
    override_reason = override_reason.strip()
    with transaction.atomic():
        # The project row lock serialises promotions: two managers cannot both replace one incumbent.
        Project.objects.select_for_update().filter(pk=checkpoint.project_id).first()
        checkpoint.refresh_from_db(fields=["state"])
        board = board or leaderboard(checkpoint.project, sources=sources)
        allowed, why = promotion_verdict(board, checkpoint)
        if board.incumbent is not None and board.incumbent.pk == checkpoint.pk:
            raise PromotionRefused(why)
        if not allowed and not override_reason:
            raise PromotionRefused(f"{why} To promote it anyway, give a reason; it will be recorded.")
        mine = board.entry(checkpoint.pk)
        held = board.incumbent_entry()
        rating = mine.rating if mine else None
        previous = held.rating if held else None
        Checkpoint.objects.filter(project_id=checkpoint.project_id, state=Checkpoint.State.INCUMBENT).exclude(
            pk=checkpoint.pk
        ).update(state=Checkpoint.State.RETIRED)
        checkpoint.state = Checkpoint.State.INCUMBENT
        checkpoint.save(update_fields=["state"])
        event_emit(project_id=checkpoint.project_id, type="checkpoint.promoted", data={
            "checkpoint": checkpoint.pk, "name": checkpoint.name,
            "previous": board.incumbent and board.incumbent.name, "overridden": not allowed,
            "automatic": by is None,
            "score": rating and rating.score, "lower": rating and rating.lower, "upper": rating and rating.upper})
        return Promotion.objects.create(
            checkpoint=checkpoint,
            previous=board.incumbent,
            user=by,
            override_reason="" if allowed else override_reason,
            score=rating and rating.score,
            lower=rating and rating.lower,
            upper=rating and rating.upper,
            previous_score=previous and previous.score,
            previous_lower=previous and previous.lower,
            previous_upper=previous and previous.upper,
            battle_votes=board.ranking.battles,
        )


def promotions(project: Project, *, limit: int = 20) -> list[Promotion]:
    return list(
        Promotion.objects.filter(checkpoint__project=project)
        .select_related("checkpoint", "previous", "user")
        .order_by("-created_at", "-id")[:limit]
    )
