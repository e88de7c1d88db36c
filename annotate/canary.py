"""The canary set: human-voted pairs held out of all training, to score reward models on.

A share of new comparisons (``Project.canary_rate``; never battles, gold or edits) is marked
``canary`` when created, or a manager holds some open ones back (``manage.py canary --hold N``).
Annotators see them like any other pair; every training export and snapshot leaves them out
(``annotate.exports``), the raw audit export keeps them. Once a canary's votes are complete its
majority label is frozen in ``canary_answer`` ("a", "b" or "tie") by ``canary_freeze``, outside the
vote path, and never changed again: a later vote or an undo does not move it.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter

from django.db import transaction

from annotate.models import Comparison, Exclusion, Project, Vote

MAX_RATE = 0.5
# Reasons whose comparisons are never canaries: battles rank checkpoints, gold checks people, edits are
# closed by the editor's own word.
NOT_CANARY = frozenset({Comparison.Reason.BATTLE, Comparison.Reason.GOLD, Comparison.Reason.EDIT})
ANSWER = {Vote.Choice.A: "a", Vote.Choice.B: "b", Vote.Choice.TIE: "tie", Vote.Choice.BOTH_BAD: "tie"}


def canary_draw(*, rate: float, first_id: int, second_id: int, seed: int = 0) -> bool:
    """Whether the pair of these two completions is a canary at ``rate``.

    A hash of the pair (in either order) and ``seed``, not a random draw: the same pair gets the same
    answer whichever code path creates it and in whatever order, and the A/B positions' rng is untouched.
    """
    if rate <= 0:
        return False
    low, high = sorted((first_id, second_id))
    digest = hashlib.sha256(f"canary:{seed}:{low}:{high}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < min(rate, MAX_RATE)


def canary_rates(project_ids) -> dict[int, float]:
    """The canary rate of each project (one query)."""
    return dict(Project.objects.filter(pk__in=set(project_ids)).values_list("id", "canary_rate"))


def canary_hold(*, project: Project, count: int, seed: int = 0) -> int:
    """Mark up to ``count`` of the project's open, unvoted, non-canary comparisons as canaries (a seeded
    choice among those eligible); return how many were marked."""
    if count < 0:
        raise ValueError("the number of comparisons to hold must not be negative")
    eligible = list(Comparison.objects.open().filter(project=project, canary=False, vote_count=0)
                    .exclude(reason__in=NOT_CANARY).order_by("id").values_list("id", flat=True))
    chosen = random.Random(seed).sample(eligible, min(count, len(eligible)))
    return Comparison.objects.filter(pk__in=chosen, canary=False, vote_count=0).update(canary=True)


def majority(choices) -> str:
    """"a" or "b" when that side has more votes than the other and than the ties, else "tie"."""
    counts = Counter(ANSWER[choice] for choice in choices)
    top = max(counts["a"], counts["b"])
    if counts["a"] == counts["b"] or counts["tie"] >= top:
        return "tie"
    return "a" if counts["a"] > counts["b"] else "b"


def canary_freeze(project: Project) -> int:
    """Freeze the label of each canary whose votes are complete and whose label is not frozen yet; return how
    many were frozen.

    Complete: at least the project's votes per comparison, from its training vote sources and people not
    excluded. The label is the majority of those votes; it is written once (``canary_answer=""`` is part of
    the update's condition), so a concurrent freeze or a later vote cannot change it.
    """
    excluded = Exclusion.objects.standing(project).values("user_id")
    pending = (Comparison.objects.filter(project=project, canary=True, canary_answer="",
                                         vote_count__gte=project.votes_per_comparison)
               .exclude(state__in=[Comparison.State.REMOVED, Comparison.State.POOL]))
    votes = (Vote.objects.filter(comparison__in=pending, source__in=list(project.training_sources))
             .exclude(annotator_id__in=excluded).values_list("comparison_id", "choice"))
    by_comparison: dict[int, list[str]] = {}
    for comparison_id, choice in votes:
        by_comparison.setdefault(comparison_id, []).append(choice)
    frozen = 0
    with transaction.atomic():
        for comparison_id, choices in by_comparison.items():
            if len(choices) < project.votes_per_comparison:
                continue
            frozen += Comparison.objects.filter(pk=comparison_id, canary_answer="").update(
                canary_answer=majority(choices))
    return frozen


def canary_pairs(project: Project) -> list[dict]:
    """The frozen canaries as ``{"prompt", "a", "b", "answer"}`` (messages and the two answer texts)."""
    rows = (Comparison.objects.filter(project=project, canary=True).exclude(canary_answer="")
            .exclude(state=Comparison.State.REMOVED).order_by("id")
            .values_list("prompt__messages", "completion_a__text", "completion_b__text", "canary_answer"))
    return [{"prompt": prompt, "a": a, "b": b, "answer": answer} for prompt, a, b, answer in rows]


def canary_counts(project: Project) -> dict[str, int]:
    """How many canaries the project holds, and how many of them are frozen."""
    held = Comparison.objects.filter(project=project, canary=True).exclude(state=Comparison.State.REMOVED)
    return {"held": held.count(), "frozen": held.exclude(canary_answer="").count(),
            "votes": Vote.objects.filter(comparison__in=held).count()}

