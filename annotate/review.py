"""Flags: an annotator reports a broken or harmful comparison, a manager decides what becomes of it.

A flag takes the comparison out of everyone's queue at once (state ``flagged``: the claim and
the vote paths serve and accept only ``open`` comparisons). A manager then either returns it
(back to ``open``, or ``closed`` if it already has all its votes) or removes it (state
``removed``: it stays out of the queue, and its votes stay out of every export and snapshot).
Every flag keeps who raised it, why, and who resolved it how and when.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotate.boundary import unstorable
from annotate.models import Comparison, Flag, Lease, Project
from annotate.services import InvalidInput

NOTE_MAX_CHARS = 2000
REASONS = {reason.value for reason in Flag.Reason}
RESOLUTIONS = {resolution.value for resolution in Flag.Resolution}


def comparison_flag(*, comparison: Comparison, annotator, reason, note="") -> Flag:
    """Record ``annotator``'s flag on ``comparison`` and take the comparison out of the queue.

    Flagging twice keeps the first flag (idempotent). Raises InvalidInput for a reason not in
    ``Flag.Reason`` or a note that is not plain text of at most ``NOTE_MAX_CHARS`` characters.
    """
    if not isinstance(reason, str) or reason not in REASONS:
        raise InvalidInput(f"reason must be one of {sorted(REASONS)}, not {reason!r:.40}")
    if not isinstance(note, str):
        raise InvalidInput("note must be a string")
    note = note.strip()
    if len(note) > NOTE_MAX_CHARS:
        raise InvalidInput(f"note is longer than {NOTE_MAX_CHARS:,} characters")
    if found := unstorable(note, "note"):
        raise InvalidInput(" ".join(found))
    with transaction.atomic():
        locked = Comparison.objects.select_for_update().get(pk=comparison.pk)
        flag = Flag.objects.filter(comparison=locked, annotator=annotator).first()
        if flag is None:
            try:
                with transaction.atomic():
                    flag = Flag.objects.create(comparison=locked, annotator=annotator, reason=reason, note=note)
            except IntegrityError:  # a double submission won the race
                flag = Flag.objects.get(comparison=locked, annotator=annotator)
        if locked.state == Comparison.State.OPEN:
            Comparison.objects.filter(pk=locked.pk).update(state=Comparison.State.FLAGGED, full_until=None)
        # The flagger's hold ends, and the pair is not offered to them again if it returns.
        Lease.objects.update_or_create(comparison=locked, annotator=annotator,
                                       defaults={"expires_at": timezone.now(), "skipped": True})
    return flag


@dataclass(frozen=True)
class FlaggedComparison:
    comparison: Comparison
    flags: list[Flag]


def flagged_comparisons(*, project: Project) -> list[FlaggedComparison]:
    """Comparisons of ``project`` with unresolved flags, oldest flag first, each with its flags."""
    flags = list(
        Flag.objects.filter(comparison__project=project, resolved_at__isnull=True)
        .select_related("annotator", "comparison__prompt", "comparison__completion_a", "comparison__completion_b")
        .order_by("created_at", "pk")
    )
    grouped: dict[int, FlaggedComparison] = {}
    for flag in flags:
        entry = grouped.setdefault(flag.comparison_id, FlaggedComparison(flag.comparison, []))
        entry.flags.append(flag)
    return list(grouped.values())


def flags_open_count(*, project: Project) -> int:
    return Flag.objects.filter(comparison__project=project, resolved_at__isnull=True).count()


def flag_resolve(*, project: Project, comparison_id, manager, resolution) -> Comparison:
    """Resolve every open flag on a comparison of ``project``: ``returned`` puts it back in the queue
    (``closed`` if it already has all its votes), ``removed`` keeps it and its votes out for good."""
    if not isinstance(resolution, str) or resolution not in RESOLUTIONS:
        raise InvalidInput(f"resolution must be one of {sorted(RESOLUTIONS)}, not {resolution!r:.40}")
    with transaction.atomic():
        comparison = (Comparison.objects.select_for_update().filter(pk=comparison_id, project=project).first()
                      if isinstance(comparison_id, int) else None)
        if comparison is None:
            raise InvalidInput(f"comparison {comparison_id!r:.40} is not in project {project.slug}")
        open_flags = Flag.objects.filter(comparison=comparison, resolved_at__isnull=True)
        if not open_flags.exists():
            raise InvalidInput(f"comparison {comparison.pk} has no open flag (someone may have resolved it already)")
        gold = comparison.state == Comparison.State.GOLD
        if resolution == Flag.Resolution.REMOVED:
            state = Comparison.State.REMOVED
            if gold:  # one gold pair fewer for the queue to draw from
                Project.objects.filter(pk=project.pk, gold_count__gt=0).update(gold_count=F("gold_count") - 1)
        elif gold:  # a returned gold pair stays gold: its votes never become training data
            state = Comparison.State.GOLD
        elif comparison.vote_count >= project.votes_per_comparison:
            state = Comparison.State.CLOSED
        else:
            state = Comparison.State.OPEN
        Comparison.objects.filter(pk=comparison.pk).update(state=state, full_until=None)
        open_flags.update(resolved_at=timezone.now(), resolved_by=manager, resolution=resolution)
        comparison.state = state
    return comparison
