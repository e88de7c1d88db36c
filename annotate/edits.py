"""Edit → preference: an annotator rewrites the better answer of a pair, and the rewrite is a preference.

``edit_record`` stores the edited text as a completion of the project's ``human-edit`` checkpoint
(retired, created on first use, like gold's; ``edited_from`` is the original, ``edited_by`` the
editor) and a closed comparison of the two (reason ``edit``, positions drawn as for any comparison)
holding one vote by the editor for the edited side. That comparison is never served (it is closed)
and is a normal pair in every export and snapshot: chosen = the edit, rejected = the original.

The edit also answers the pair it came from: an annotator who has not voted on it yet votes for
the side they edited (through ``vote_record``, so the overlap, the lease and the count rules are the
vote path's), in the same transaction. One who voted already keeps that vote, whatever it was: an
edit after "both bad" is worth having. When the pair filled up meanwhile (their hold ran out and
someone else completed it), the edit is still recorded and ``vote_note`` says the vote was not.

Who may edit: a member of the project (or staff) who holds (or held, unskipped) a lease on the
comparison or has voted on it, i.e. someone who was shown it. Flagged, removed and unserved (pool)
pairs are not editable.

Idempotent: the completion is unique per prompt, checkpoint and text, and the editor has one vote per
comparison, so posting the same edit again stores nothing. A second annotator making the very same
edit adds their vote to the same edit comparison.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotate import access, services
from annotate.boundary import oversized, unstorable
from annotate.models import Checkpoint, Comparison, Completion, Lease, Vote, text_hash
from annotate.services import InvalidInput
from annotate.signals import votes_recorded
from annotate.votes import ComparisonFull, vote_record

#: The checkpoint edited texts are attributed to (retired: never battled, sampled or paired by comparisons_build).
EDIT_CHECKPOINT = "human-edit"
SIDES = ("a", "b")
_EDITABLE_STATES = (Comparison.State.OPEN, Comparison.State.CLOSED, Comparison.State.GOLD)


class EditError(InvalidInput):
    """An edit that cannot be recorded; the message says why, for the person who sent it. Nothing was stored."""

    status = 400


class EditNotAllowed(EditError):
    """The annotator was never shown this comparison (or is no member): as if it did not exist."""

    status = 404


class NotEditable(EditError):
    """The comparison is out of the queue (flagged, removed, or not served yet)."""

    status = 409


@dataclass(frozen=True)
class EditOutcome:
    completion: Completion  # the edited text, checkpoint "human-edit"
    comparison: Comparison  # edited vs original, closed
    vote: Vote  # the editor's vote on it, for the edited side
    created: bool  # False: a replay, nothing was stored
    original_vote: Vote | None  # the editor's vote on the pair they edited from (earlier or cast now)
    original_vote_created: bool
    vote_note: str = ""  # why no vote on the original pair was cast, when none was


def edit_checkpoint(project) -> Checkpoint:
    return services.checkpoint_get_or_create(project=project, name=EDIT_CHECKPOINT, state=Checkpoint.State.RETIRED,
                                             meta={"human_edit": True})


def _same(text: str, original: str) -> bool:
    """Equal up to line endings and surrounding white space (a browser sends a textarea with CRLF)."""
    def norm(value: str) -> str:
        return value.replace("\r\n", "\n").strip()

    return norm(text) == norm(original)


def edit_source(*, comparison: Comparison, annotator, side) -> Completion:
    """The completion on ``side`` of ``comparison`` if ``annotator`` may edit it; else EditError saying why."""
    if side not in SIDES:
        raise EditError(f"side must be 'a' or 'b' (the answer you edit), not {side!r}"[:120])
    project = comparison.project
    if access.role_in(project, annotator) is None:
        raise EditNotAllowed(f"comparison {comparison.pk} does not exist")
    if comparison.state not in _EDITABLE_STATES:
        raise NotEditable(f"comparison {comparison.pk} is out of the queue ({comparison.get_state_display()}), "
                          "so its answers cannot be edited")
    shown = (Lease.objects.filter(comparison=comparison, annotator=annotator, skipped=False).exists()
             or Vote.objects.filter(comparison=comparison, annotator=annotator).exists())
    if not shown:
        raise EditNotAllowed(f"comparison {comparison.pk} was not shown to you (or you skipped it), so you cannot "
                             "edit its answers")
    return comparison.completion_a if side == "a" else comparison.completion_b


def _clean_text(text, original: Completion) -> str:
    if not isinstance(text, str):
        raise EditError(f"text must be a string, not {type(text).__name__}")
    if found := unstorable(text, "text"):
        raise EditError(" ".join(found))
    if problem := oversized(text):
        raise EditError(f"text {problem}")
    if not text.strip():
        raise EditError("text is empty: write the improved answer (to vote without editing, use the vote buttons)")
    if _same(text, original.text):
        raise EditError("text is unchanged from the original answer: change something, or simply vote")
    return text


def edit_record(
    *,
    comparison: Comparison,
    annotator,
    side: str,
    text,
    idempotency_key: str = "",
    rng: random.Random | None = None,
    now=None,
) -> EditOutcome:
    """Record ``annotator``'s edit of the answer on ``side`` of ``comparison`` (see the module docstring).

    Raises EditError (400), EditNotAllowed (404), NotEditable (409), or the vote path's VoteError other
    than ComparisonFull (for instance an idempotency_key used on another comparison); nothing is stored
    then. ``idempotency_key`` goes to the vote on the original pair.
    """
    original = edit_source(comparison=comparison, annotator=annotator, side=side)
    text = _clean_text(text, original)
    now = now or timezone.now()
    checkpoint = edit_checkpoint(comparison.project)
    with transaction.atomic():
        original_vote, original_created, note = _vote_original(comparison, annotator, side, idempotency_key, now)
        # Edits of one original queue behind each other (PostgreSQL), so one pair of texts gets one comparison.
        Completion.objects.select_for_update().filter(pk=original.pk).values_list("pk", flat=True).first()
        completion, _ = Completion.objects.get_or_create(
            prompt_id=original.prompt_id, checkpoint=checkpoint, text_hash=text_hash(text),
            defaults={"text": text, "edited_from": original, "edited_by": annotator},
        )
        pair = (Comparison.objects.select_for_update()
                .filter(completion_a__in=(completion, original), completion_b__in=(completion, original)).first())
        if pair is None:
            a, b = (completion, original) if (rng or random).random() < 0.5 else (original, completion)
            pair = Comparison.objects.create(
                project_id=comparison.project_id, prompt_id=original.prompt_id, completion_a=a, completion_b=b,
                reason=Comparison.Reason.EDIT, state=Comparison.State.CLOSED, vote_count=0,
                # An edit of a canary pair would teach training the canary's answer: it is held out with it.
                canary=comparison.canary,
            )
        vote, created = _vote_edit(pair, completion, annotator, now)
    return EditOutcome(completion=completion, comparison=pair, vote=vote, created=created,
                       original_vote=original_vote, original_vote_created=original_created, vote_note=note)


def _vote_original(comparison: Comparison, annotator, side: str, idempotency_key: str,
                   now) -> tuple[Vote | None, bool, str]:
    """The editor's vote on the pair edited from: the one they gave, or one for ``side`` cast now."""
    earlier = Vote.objects.filter(comparison=comparison, annotator=annotator).first()
    if earlier is not None:
        return earlier, False, ""
    try:
        outcome = vote_record(annotator=annotator, comparison_id=comparison.pk, choice=side,
                              idempotency_key=idempotency_key, now=now)
    except ComparisonFull as error:  # its savepoint rolled back; the edit still counts on its own
        return None, False, f"your vote on the pair was not recorded: {error}"
    return outcome.vote, outcome.created, ""


def _vote_edit(pair: Comparison, completion: Completion, annotator, now) -> tuple[Vote, bool]:
    """The editor's vote for the edited side of ``pair`` (the row is locked), counted exactly once."""
    earlier = Vote.objects.filter(comparison=pair, annotator=annotator).first()
    if earlier is not None:
        return earlier, False
    choice = "a" if pair.completion_a_id == completion.pk else "b"
    try:
        with transaction.atomic():
            vote = Vote.objects.create(comparison=pair, annotator=annotator, choice=choice, winner=completion,
                                       source=Vote.Source.HUMAN, created_at=now)
    except IntegrityError:  # a concurrent replay of this very edit won the race
        return Vote.objects.get(comparison=pair, annotator=annotator), False
    Comparison.objects.filter(pk=pair.pk).update(vote_count=F("vote_count") + 1)
    pair.vote_count += 1
    project_id, vote_id = pair.project_id, vote.pk
    transaction.on_commit(lambda: votes_recorded.send(sender=Vote, project_id=project_id, count=1,
                                                      vote_ids=(vote_id,)))
    return vote, True
