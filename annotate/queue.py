"""The comparison queue: which comparison an annotator sees next.

Contract of ``comparison_next``: the comparison returned is open, in the project,
not yet voted by this annotator, and holding it does not push the comparison past
the project's overlap (votes plus other people's live leases stay below
``votes_per_comparison``). Order: priority (high first), then age.

Concurrency: on PostgreSQL the candidate rows are locked with
``FOR UPDATE SKIP LOCKED`` and the capacity is counted again under the lock, so
two annotators asking at once never both take the last slot. On SQLite the
database runs transactions in IMMEDIATE mode (see settings), which serialises them.
"""
from __future__ import annotations

from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count, F, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotate.models import Comparison, Lease, Project

# How many locked candidates one request looks at before giving up on this round.
CANDIDATE_BATCH = 8


def _live_leases_of_others(*, annotator, now) -> Subquery:
    return Subquery(
        Lease.objects.filter(comparison=OuterRef("pk"), expires_at__gt=now)
        .exclude(annotator=annotator)
        .order_by()
        .values("comparison")
        .annotate(n=Count("id"))
        .values("n")[:1],
        output_field=IntegerField(),
    )


def _held_lease(*, project: Project, annotator, now) -> Comparison | None:
    lease = (
        Lease.objects.filter(
            annotator=annotator,
            expires_at__gt=now,
            comparison__project=project,
            comparison__state=Comparison.State.OPEN,
        )
        .exclude(comparison__votes__annotator=annotator)
        .select_related("comparison")
        .order_by("created_at")
        .first()
    )
    return lease.comparison if lease else None


def _has_room(comparison: Comparison, *, annotator, now, wanted: int) -> bool:
    others = Lease.objects.filter(comparison=comparison, expires_at__gt=now).exclude(annotator=annotator).count()
    return comparison.vote_count + others < wanted


def comparison_next(*, project: Project, annotator, now=None) -> Comparison | None:
    """Reserve and return the next comparison for ``annotator``, or None when nothing is left.

    Calling it again before voting returns the same comparison (the live lease),
    so a reload never burns a slot.
    """
    now = now or timezone.now()
    wanted = project.votes_per_comparison
    with transaction.atomic():
        held = _held_lease(project=project, annotator=annotator, now=now)
        if held is not None:
            return held
        candidates = (
            Comparison.objects.open()
            .filter(project=project)
            .not_voted_by(annotator)
            .exclude(leases__annotator=annotator, leases__skipped=True)
            .annotate(others=Coalesce(_live_leases_of_others(annotator=annotator, now=now), Value(0)))
            .filter(vote_count__lt=wanted - F("others"))
            .in_queue_order()
        )
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        for comparison in candidates[:CANDIDATE_BATCH]:
            # The candidate query read leases before we held the lock; count again now that we do.
            if not _has_room(comparison, annotator=annotator, now=now, wanted=wanted):
                continue
            Lease.objects.update_or_create(
                comparison=comparison,
                annotator=annotator,
                defaults={"expires_at": now + timedelta(seconds=project.lease_seconds), "created_at": now},
            )
            return comparison
    return None


def comparison_skip(*, comparison: Comparison, annotator, now=None) -> None:
    """Give a comparison back to the queue and never offer it to this annotator again."""
    now = now or timezone.now()
    Lease.objects.update_or_create(
        comparison=comparison, annotator=annotator, defaults={"expires_at": now, "skipped": True}
    )


def comparisons_left(*, project: Project, annotator) -> int:
    """How many comparisons this annotator could still be given (an estimate; ignores leases)."""
    return (
        Comparison.objects.open()
        .filter(project=project)
        .not_voted_by(annotator)
        .exclude(leases__annotator=annotator, leases__skipped=True)
        .filter(vote_count__lt=project.votes_per_comparison)
        .count()
    )
