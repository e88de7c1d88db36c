"""Recording votes: one transaction, one row per annotator and comparison, never beyond the overlap."""
from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotate.models import Comparison, Lease, Vote
from annotate.signals import votes_recorded


class VoteError(Exception):
    """A vote that cannot be recorded; the message says why, for the person who sent it."""

    status = 400


class ComparisonFull(VoteError):
    status = 409


class IdempotencyConflict(VoteError):
    status = 409


@dataclass(frozen=True)
class VoteOutcome:
    vote: Vote
    created: bool


STRENGTHS = {choice.value for choice in Vote.Strength}
CHOICES = {choice.value for choice in Vote.Choice}


def _clean(choice: str, strength: int | None, rationale: str, idempotency_key: str) -> int | None:
    if choice not in CHOICES:
        raise VoteError(f"choice must be one of {sorted(CHOICES)}, not {choice!r}")
    if strength is not None and strength not in STRENGTHS:
        raise VoteError(f"strength must be 1 (slightly), 2 (clearly) or 3 (much better), not {strength!r}")
    if len(rationale) > 10_000:
        raise VoteError("rationale is longer than 10,000 characters")
    if len(idempotency_key) > 64:
        raise VoteError("idempotency_key is longer than 64 characters")
    # Strength qualifies a winner; a tie or "both bad" has none.
    return strength if choice in (Vote.Choice.A, Vote.Choice.B) else None


def _replay(*, annotator, comparison_id: int, idempotency_key: str) -> VoteOutcome | None:
    if not idempotency_key:
        return None
    vote = Vote.objects.filter(annotator=annotator, idempotency_key=idempotency_key).first()
    if vote is None:
        return None
    if vote.comparison_id != comparison_id:
        raise IdempotencyConflict("idempotency_key was already used for a different comparison")
    return VoteOutcome(vote, created=False)


def vote_record(
    *,
    annotator,
    comparison_id: int,
    choice: str,
    strength: int | None = None,
    rationale: str = "",
    time_spent_ms: int | None = None,
    idempotency_key: str = "",
    source: str = Vote.Source.HUMAN,
    now=None,
) -> VoteOutcome:
    """Record ``annotator``'s vote on a comparison, exactly once.

    A replay (same idempotency key, or a second submission for the same comparison)
    returns the first vote with ``created=False`` and writes nothing. A vote that would
    exceed the project's overlap raises ``ComparisonFull``; nothing is stored then.
    The caller has already checked that the annotator may vote in this project.
    """
    strength = _clean(choice, strength, rationale, idempotency_key)
    now = now or timezone.now()
    replay = _replay(annotator=annotator, comparison_id=comparison_id, idempotency_key=idempotency_key)
    if replay:
        return replay
    try:
        with transaction.atomic():
            outcome = _record_locked(
                annotator=annotator,
                comparison_id=comparison_id,
                choice=choice,
                strength=strength,
                rationale=rationale,
                time_spent_ms=time_spent_ms,
                idempotency_key=idempotency_key,
                source=source,
                now=now,
            )
    except IntegrityError:
        # A concurrent request with the same key (or for the same comparison) won the race.
        replay = _replay(annotator=annotator, comparison_id=comparison_id, idempotency_key=idempotency_key)
        existing = replay.vote if replay else Vote.objects.filter(
            annotator=annotator, comparison_id=comparison_id
        ).first()
        if existing is None:
            raise
        return VoteOutcome(existing, created=False)
    if outcome.created:
        project_id = outcome.vote.comparison.project_id
        transaction.on_commit(lambda: votes_recorded.send(sender=Vote, project_id=project_id, count=1))
    return outcome


def _record_locked(
    *, annotator, comparison_id, choice, strength, rationale, time_spent_ms, idempotency_key, source, now
) -> VoteOutcome:
    try:
        comparison = (
            Comparison.objects.select_for_update(of=("self",)).select_related("project").get(pk=comparison_id)
        )
    except Comparison.DoesNotExist:
        raise VoteError(f"comparison {comparison_id} does not exist") from None
    existing = Vote.objects.filter(comparison=comparison, annotator=annotator).first()
    if existing is not None:
        return VoteOutcome(existing, created=False)
    wanted = comparison.project.votes_per_comparison
    leases = Lease.objects.filter(comparison=comparison, expires_at__gt=now)
    others = leases.exclude(annotator=annotator).count()
    if comparison.state != Comparison.State.OPEN or comparison.vote_count + others >= wanted:
        raise ComparisonFull("this comparison already has all the votes it needs")
    own = Lease.objects.filter(comparison=comparison, annotator=annotator).first()
    if time_spent_ms is None and own is not None:
        time_spent_ms = max(0, int((now - own.created_at).total_seconds() * 1000))
    winner_id = {"a": comparison.completion_a_id, "b": comparison.completion_b_id}.get(choice)
    vote = Vote.objects.create(
        comparison=comparison,
        annotator=annotator,
        choice=choice,
        winner_id=winner_id,
        strength=strength,
        rationale=rationale.strip(),
        time_spent_ms=time_spent_ms,
        idempotency_key=idempotency_key,
        source=source,
        created_at=now,
    )
    comparison.vote_count += 1
    if comparison.vote_count >= wanted:
        comparison.state = Comparison.State.CLOSED
    comparison.save(update_fields=["vote_count", "state"])
    if own is not None:
        own.delete()
    return VoteOutcome(vote, created=True)
