"""Recording votes: one transaction, one row per annotator and comparison, never beyond the overlap.

The statements of the vote transaction are written out in SQL because this is the hot
path of the product: the ORM spent several times more CPU building them than the
database spent running them. The transaction is two statements: the row lock (which also
reads earlier votes and the annotator's lease; portable), then the write, which on
PostgreSQL is one statement with data-modifying CTEs and on SQLite the same four steps
sent one by one. The number of round trips is locked in by
``tests/annotate/test_api_perf.py``.

On PostgreSQL the common case (a first vote with room left) is one call of the function
``annotate_vote_fast`` (migration 0003), which runs the same statements in its own
implicit transaction: one round trip instead of four (BEGIN, lock, write, COMMIT). It
answers nothing for every other case, and the general path below then runs as before.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotate import sql
from annotate.boundary import unstorable
from annotate.models import Comparison, Lease, Snapshot, Vote, WithdrawnVote
from annotate.signals import votes_recorded

# The comparison, its project's overlap and what this annotator already has on it: a vote
# on it, the comparison their idempotency key was used on (a NULL key matches nothing), when
# their lease on it began, and when a vote sent with this key was withdrawn (undone). The row is locked (on PostgreSQL) until the vote commits.
# The subqueries read the snapshot taken before the lock was granted; that is enough: a
# vote that slipped in meanwhile makes the INSERT hit the unique constraints (a replay),
# and other people's leases are counted again by the write, after the lock.
_LOCK = """
    SELECT c.state, c.vote_count, c.completion_a_id, c.completion_b_id, c.project_id, p.votes_per_comparison,
           (SELECT v.id FROM annotate_vote v WHERE v.annotator_id = %s AND v.comparison_id = c.id),
           (SELECT v.comparison_id FROM annotate_vote v WHERE v.annotator_id = %s AND v.idempotency_key = %s),
           (SELECT l.created_at FROM annotate_lease l WHERE l.comparison_id = c.id AND l.annotator_id = %s),
           (SELECT MAX(w.withdrawn_at) FROM annotate_withdrawnvote w WHERE w.annotator_id = %s AND w.idempotency_key = %s)
    FROM annotate_comparison c JOIN annotate_project p ON p.id = c.project_id
    WHERE c.id = %s
"""
# This annotator's vote on this comparison, or with this idempotency key (NULL matches nothing).
_EARLIER = """
    SELECT id, comparison_id, idempotency_key FROM annotate_vote
    WHERE annotator_id = %s AND (comparison_id = %s OR idempotency_key = %s)
"""
# Other people's live leases on the comparison (under the row lock nobody can add one).
_OTHERS = "SELECT COUNT(*) FROM annotate_lease WHERE comparison_id = %s AND annotator_id <> %s AND expires_at > %s"
_VOTE_FIELDS = [f for f in Vote._meta.concrete_fields if not f.primary_key]
_INSERT = (
    f"INSERT INTO {Vote._meta.db_table} ({', '.join(f.column for f in _VOTE_FIELDS)})"
    f" VALUES ({', '.join(['%s'] * len(_VOTE_FIELDS))}) RETURNING id"
)
# PostgreSQL's one-call common case (see the module docstring). Returns vote id, winner, time spent,
# project, overlap; or no row.
_FAST = ("SELECT * FROM annotate_vote_fast(%s::bigint, %s::bigint, %s, %s::smallint, %s, %s::integer, %s, %s,"
         " %s::timestamptz)")
_COUNT = "UPDATE annotate_comparison SET vote_count = %s, state = %s WHERE id = %s"
_UNLEASE = "DELETE FROM annotate_lease WHERE comparison_id = %s AND annotator_id = %s"


@cache
def _write_pg() -> str:
    """PostgreSQL writes the vote in one statement (a fresh snapshot, after the lock): count other
    people's live leases, and only if there is room insert the vote, update the count and drop the
    annotator's lease. Parameters: comparison, annotator, now, the vote's columns, vote_count,
    wanted, new count, new state, comparison, comparison, annotator. Returns the vote id, or no
    row when the comparison is full."""
    # Typed placeholders: INSERT ... SELECT does not infer parameter types from the target columns.
    values = ", ".join(f"%s::{f.cast_db_type(connection)}" for f in _VOTE_FIELDS)
    return f"""
    WITH others AS ({_OTHERS.replace("SELECT COUNT(*)", "SELECT COUNT(*) AS n")}),
    ins AS (INSERT INTO {Vote._meta.db_table} ({', '.join(f.column for f in _VOTE_FIELDS)})
            SELECT {values} FROM others WHERE %s + others.n < %s RETURNING id),
    upd AS (UPDATE annotate_comparison SET vote_count = %s, state = %s
            WHERE id = %s AND EXISTS (SELECT 1 FROM ins)),
    del AS (DELETE FROM annotate_lease WHERE comparison_id = %s AND annotator_id = %s AND EXISTS (SELECT 1 FROM ins))
    SELECT id FROM ins
    """


def _vote_values(**values) -> list:
    """Every column of a new vote, in ``_VOTE_FIELDS`` order, defaults filled in, ready for the database."""
    for field in _VOTE_FIELDS:
        if field.attname not in values:
            values[field.attname] = field.get_default()
    return [values[f.attname] for f in _VOTE_FIELDS]


def _saved_vote(pk: int, values: list) -> Vote:
    return Vote.from_db(connection.alias, None, [pk, *values])


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive UTC datetimes from raw SQL; PostgreSQL aware ones.
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


class VoteError(Exception):
    """A vote that cannot be recorded; the message says why, for the person who sent it."""

    status = 400


class ComparisonFull(VoteError):
    status = 409


class IdempotencyConflict(VoteError):
    status = 409


class NotVotable(VoteError):
    """The comparison is out of the queue (flagged for review, or removed)."""

    status = 409


class NotAmendable(VoteError):
    """A vote that can no longer be undone or changed (too late, or already in a snapshot)."""

    status = 409


class NoSuchVote(VoteError):
    status = 404


@dataclass(frozen=True)
class VoteOutcome:
    vote: Vote
    created: bool


@dataclass(frozen=True)
class _Ballot:
    """A cleaned vote on its way to the database (both write paths take one)."""

    annotator_id: int
    comparison_id: int
    choice: str
    strength: int | None
    rationale: str
    time_spent_ms: int | None
    idempotency_key: str
    source: str
    now: datetime

    def values(self, *, winner_id: int | None, time_spent_ms: int | None) -> list:
        """The new vote's columns (see ``_vote_values``)."""
        return _vote_values(
            comparison_id=self.comparison_id, annotator_id=self.annotator_id, choice=self.choice,
            winner_id=winner_id, strength=self.strength, rationale=self.rationale, time_spent_ms=time_spent_ms,
            idempotency_key=self.idempotency_key, source=self.source, created_at=self.now,
        )


def _created(vote_id: int, values: list, project_id: int) -> VoteOutcome:
    """A vote just written: announce it once the transaction commits, answer with the row."""
    transaction.on_commit(lambda: votes_recorded.send(sender=Vote, project_id=project_id, count=1,
                                                      vote_ids=(vote_id,)))
    return VoteOutcome(_saved_vote(vote_id, values), created=True)


STRENGTHS = {choice.value for choice in Vote.Strength}
CHOICES = {choice.value for choice in Vote.Choice}


TIME_SPENT_MAX_MS = 7 * 24 * 3600 * 1000  # a week: anything longer is not time spent on one pair


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain_text(value, name: str, limit: int) -> str:
    """A string fit to store: at most ``limit`` characters, no NUL, no lone surrogate (neither encodes)."""
    if not isinstance(value, str):
        raise VoteError(f"{name} must be a string, not {_shown(value)}")
    if len(value) > limit:
        raise VoteError(f"{name} is longer than {limit:,} characters")
    if found := unstorable(value, name):
        raise VoteError(" ".join(found))
    return value


def _clean(choice, strength, rationale, idempotency_key, time_spent_ms=None) -> int | None:
    """Every field checked for type and range before anything is written; VoteError names the first bad one."""
    if not isinstance(choice, str) or choice not in CHOICES:
        raise VoteError(f"choice must be one of {sorted(CHOICES)}, not {_shown(choice)}")
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int)
                                 or strength not in STRENGTHS):
        raise VoteError(f"strength must be 1 (slightly), 2 (clearly) or 3 (much better), not {_shown(strength)}")
    _plain_text(rationale, "rationale", 10_000)
    _plain_text(idempotency_key, "idempotency_key", 64)
    if time_spent_ms is not None and (isinstance(time_spent_ms, bool) or not isinstance(time_spent_ms, int)
                                      or not 0 <= time_spent_ms <= TIME_SPENT_MAX_MS):
        raise VoteError(f"time_spent_ms must be a whole number of milliseconds from 0 to {TIME_SPENT_MAX_MS:,}, "
                        f"not {_shown(time_spent_ms)}")
    # Strength qualifies a winner; a tie or "both bad" has none.
    return strength if choice in (Vote.Choice.A, Vote.Choice.B) else None


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
    returns the first vote with ``created=False`` and writes nothing; one with another
    choice raises ``IdempotencyConflict`` naming both (a vote is final). A vote that would
    exceed the project's overlap raises ``ComparisonFull``; nothing is stored then.
    The caller has already checked that the annotator may vote in this project.
    """
    outcome = _record(annotator, comparison_id, choice, strength, rationale, time_spent_ms, idempotency_key,
                      source, now)
    if not outcome.created and outcome.vote.choice != choice:
        how = "with this idempotency_key " if idempotency_key else ""
        raise IdempotencyConflict(f"you already voted {outcome.vote.choice!r} on comparison {comparison_id} {how}and a "
                                  f"vote is final: {choice!r} was not recorded")
    return outcome


def _record(annotator, comparison_id: int, choice: str, strength: int | None, rationale: str,
            time_spent_ms: int | None, idempotency_key: str, source: str, now) -> VoteOutcome:
    strength = _clean(choice, strength, rationale, idempotency_key, time_spent_ms)
    ballot = _Ballot(
        annotator_id=annotator.pk, comparison_id=comparison_id, choice=choice, strength=strength,
        rationale=rationale.strip(), time_spent_ms=time_spent_ms, idempotency_key=idempotency_key, source=source,
        now=now or timezone.now(),
    )
    if connection.vendor == "postgresql":
        outcome = _record_fast(ballot)
        if outcome is not None:
            return outcome
    try:
        with transaction.atomic():
            outcome = _record_locked(ballot)
    except IntegrityError:
        # A concurrent request with the same key (or for the same comparison) won the race.
        existing = _earlier_vote(annotator_id=annotator.pk, comparison_id=comparison_id,
                                 idempotency_key=idempotency_key)
        if existing is None:
            raise
        return existing
    return outcome


def _record_fast(ballot: _Ballot) -> VoteOutcome | None:
    """The common case in one call of ``annotate_vote_fast``; None: take the general path."""
    b = ballot
    params = (b.comparison_id, b.annotator_id, b.choice, b.strength, b.rationale, b.time_spent_ms,
              b.idempotency_key, b.source, b.now)
    try:
        # Outside a transaction the call is its own; inside one it needs a savepoint to fail alone.
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            written = sql.row(_FAST, params)
    except IntegrityError:
        return None  # a concurrent replay won the race; the general path answers with its vote
    if written is None:
        return None
    vote_id, winner_id, time_spent_ms, project_id, _ = written
    return _created(vote_id, ballot.values(winner_id=winner_id, time_spent_ms=time_spent_ms), project_id)


def _earlier_vote(*, annotator_id: int, comparison_id: int, idempotency_key: str) -> VoteOutcome | None:
    """The replay answer: the vote with this key, else the vote on this comparison, else None.

    Raises ``IdempotencyConflict`` when the key was used for another comparison.
    """
    rows = sql.rows(_EARLIER, (annotator_id, comparison_id, idempotency_key or None))
    keyed = next((row for row in rows if idempotency_key and row[2] == idempotency_key), None)
    if keyed is not None and keyed[1] != comparison_id:
        raise IdempotencyConflict("idempotency_key was already used for a different comparison")
    row = keyed or next((row for row in rows if row[1] == comparison_id), None)
    return VoteOutcome(Vote.objects.get(pk=row[0]), created=False) if row else None


def _record_locked(ballot: _Ballot) -> VoteOutcome:
    me, comparison_id, now = ballot.annotator_id, ballot.comparison_id, ballot.now
    lock = _LOCK + (" FOR UPDATE OF c" if connection.features.has_select_for_update_of else "")
    key = ballot.idempotency_key or None
    found = sql.row(lock, (me, me, key, me, me, key, comparison_id))
    if found is None:
        raise VoteError(f"comparison {comparison_id} does not exist")
    (state, vote_count, completion_a_id, completion_b_id, project_id, wanted, voted, keyed_on, leased_at,
     withdrawn_at) = found
    if keyed_on is not None and keyed_on != comparison_id:
        raise IdempotencyConflict("idempotency_key was already used for a different comparison")
    if withdrawn_at is not None and voted is None:
        raise IdempotencyConflict("the vote sent with this idempotency_key was undone, so this replay recorded "
                                  "nothing; to vote again, send a new idempotency_key")
    if voted is not None:
        return VoteOutcome(Vote.objects.get(pk=voted), created=False)
    if state == Comparison.State.GOLD:
        return _record_gold(ballot, completion_a_id, completion_b_id, project_id, leased_at)
    if state != Comparison.State.OPEN or vote_count >= wanted:
        return _replay_or_full(ballot)
    time_spent_ms = ballot.time_spent_ms
    if time_spent_ms is None and leased_at is not None:
        time_spent_ms = max(0, int((now - _aware(leased_at)).total_seconds() * 1000))
    values = ballot.values(winner_id={"a": completion_a_id, "b": completion_b_id}.get(ballot.choice),
                           time_spent_ms=time_spent_ms)
    vote_count += 1
    count = (vote_count, Comparison.State.CLOSED if vote_count >= wanted else state, comparison_id)
    if connection.vendor == "postgresql":
        prepared = [f.get_db_prep_save(v, connection) for f, v in zip(_VOTE_FIELDS, values, strict=True)]
        inserted = sql.row(_write_pg(), (comparison_id, me, now, *prepared, vote_count - 1, wanted, *count,
                                         comparison_id, me))
    else:
        # SQLite: the IMMEDIATE transaction keeps every other writer out, so plain statements do.
        others = sql.value(_OTHERS, (comparison_id, me, now))
        inserted = None
        if vote_count - 1 + others < wanted:
            prepared = [f.get_db_prep_save(v, connection) for f, v in zip(_VOTE_FIELDS, values, strict=True)]
            inserted = sql.row(_INSERT, prepared)
            sql.execute(_COUNT, count)
            sql.execute(_UNLEASE, (comparison_id, me))
    if inserted is None:
        return _replay_or_full(ballot)
    return _created(inserted[0], values, project_id)


def _record_gold(ballot: _Ballot, completion_a_id: int, completion_b_id: int, project_id: int,
                 leased_at) -> VoteOutcome:
    """A vote on a gold comparison: no overlap applies (everyone may answer it); then the gold rule."""
    from annotate.gold import gold_check  # gold builds on services, which the vote path does not need

    time_spent_ms = ballot.time_spent_ms
    if time_spent_ms is None and leased_at is not None:
        time_spent_ms = max(0, int((ballot.now - _aware(leased_at)).total_seconds() * 1000))
    values = ballot.values(winner_id={"a": completion_a_id, "b": completion_b_id}.get(ballot.choice),
                           time_spent_ms=time_spent_ms)
    prepared = [f.get_db_prep_save(v, connection) for f, v in zip(_VOTE_FIELDS, values, strict=True)]
    inserted = sql.row(_INSERT, prepared)
    sql.execute("UPDATE annotate_comparison SET vote_count = vote_count + 1 WHERE id = %s", (ballot.comparison_id,))
    sql.execute(_UNLEASE, (ballot.comparison_id, ballot.annotator_id))

    def check() -> None:
        from django.contrib.auth import get_user_model

        from annotate.models import Project

        gold_check(project=Project.objects.get(pk=project_id), user=get_user_model()(pk=ballot.annotator_id))

    transaction.on_commit(check)
    return _created(inserted[0], values, project_id)


def _replay_or_full(ballot: _Ballot) -> VoteOutcome:
    """No room left: a replay of a vote that committed while we waited for the row lock (the
    lock's own read could not see it yet) gets that vote; anything else is ComparisonFull."""
    replay = _earlier_vote(annotator_id=ballot.annotator_id, comparison_id=ballot.comparison_id,
                           idempotency_key=ballot.idempotency_key)
    if replay is None:
        state = Comparison.objects.filter(pk=ballot.comparison_id).values_list("state", flat=True).first()
        if state in (Comparison.State.FLAGGED, Comparison.State.REMOVED):
            raise NotVotable(f"comparison {ballot.comparison_id} was flagged as broken or harmful and is out of the "
                             "queue: this vote was not recorded; take the next pair")
        expired = (Lease.objects.filter(comparison_id=ballot.comparison_id, annotator_id=ballot.annotator_id,
                                        expires_at__lte=ballot.now, skipped=False)
                   .values_list("expires_at", flat=True).first())
        if expired is not None:
            raise ComparisonFull(f"your hold on this comparison ran out at {expired:%H:%M:%S} UTC and it passed to "
                                 "another annotator, who completed it: this vote was not recorded; take the next pair")
        raise ComparisonFull("this comparison already has all the votes it needs")
    return replay


def _amendable(annotator, vote_id: int, now) -> tuple[Vote, Comparison]:
    """The annotator's own vote ``vote_id``, with its comparison locked, if it may still be undone or
    changed: a human vote, at most ``VOTE_UNDO_SECONDS`` old, and in no snapshot yet (a snapshot
    frozen at or after the vote may hold it, and a snapshot never changes)."""
    comparison_id = (Vote.objects.filter(pk=vote_id, annotator=annotator)
                     .values_list("comparison_id", flat=True).first())
    if comparison_id is None:
        raise NoSuchVote(f"you have no vote {vote_id} (it may have been undone already)")
    # The comparison's row lock first, as the vote path takes it; then the vote, read again under it.
    comparison = Comparison.objects.select_for_update().select_related("project").get(pk=comparison_id)
    vote = Vote.objects.filter(pk=vote_id, annotator=annotator).first()
    if vote is None:
        raise NoSuchVote(f"you have no vote {vote_id} (it may have been undone already)")
    if vote.source != Vote.Source.HUMAN:
        raise NotAmendable(f"vote {vote_id} is a {vote.source} vote; only votes given in the page or the API change")
    if comparison.reason == Comparison.Reason.EDIT:
        # Undone, it would reopen the edit's pair (annotate.edits) and send it to the queue.
        raise NotAmendable(f"vote {vote_id} records an edit you made and is final")
    window = settings.VOTE_UNDO_SECONDS
    if (now - vote.created_at).total_seconds() > window:
        raise NotAmendable(f"vote {vote_id} was given more than {window} seconds ago and is final")
    frozen = Snapshot.objects.filter(project_id=comparison.project_id, created_at__gte=vote.created_at).first()
    if frozen is not None:
        raise NotAmendable(f"vote {vote_id} is already in snapshot {frozen.pk} (frozen at {frozen.created_at:%H:%M:%S} "
                           "UTC) and is final")
    return vote, comparison


def vote_withdraw(*, annotator, vote_id: int, now=None) -> WithdrawnVote:
    """Undo ``annotator``'s vote ``vote_id`` within the undo window (see ``_amendable``).

    The vote is deleted and remembered as a ``WithdrawnVote`` (a replay of its request records
    nothing), the comparison's count goes down (a comparison the vote had closed opens again), and
    the comparison comes back to this annotator first: they hold a fresh lease on it, and give up the
    one the page showed after the vote. Raises
    ``NoSuchVote`` (404) or ``NotAmendable`` (409); nothing changes then.
    """
    now = now or timezone.now()
    with transaction.atomic():
        vote, comparison = _amendable(annotator, vote_id, now)
        withdrawn = WithdrawnVote.objects.create(
            comparison=comparison, annotator=annotator, choice=vote.choice, strength=vote.strength,
            idempotency_key=vote.idempotency_key, voted_at=vote.created_at, withdrawn_at=now,
        )
        vote.delete()
        count = comparison.vote_count - 1
        state = comparison.state
        if state == Comparison.State.CLOSED and count < comparison.project.votes_per_comparison:
            state = Comparison.State.OPEN
        Comparison.objects.filter(pk=comparison.pk).update(vote_count=count, state=state, full_until=None)
        # The pair the page showed instead goes back to the queue (a hold given up: its hint is cleared,
        # as a skip does), so the queue's held lease is the undone one.
        shown = list(Lease.objects.filter(annotator=annotator, comparison__project_id=comparison.project_id,
                                          expires_at__gt=now, skipped=False).values_list("comparison_id", flat=True))
        if shown:
            Lease.objects.filter(annotator=annotator, comparison_id__in=shown).update(expires_at=now)
            Comparison.objects.filter(pk__in=shown, full_until__gt=now).update(full_until=None)
        Lease.objects.update_or_create(
            comparison=comparison, annotator=annotator,
            defaults={"expires_at": now + timedelta(seconds=comparison.project.lease_seconds), "skipped": False,
                      "created_at": now},
        )
    return withdrawn


def vote_strength_set(*, annotator, vote_id: int, strength: int | None, now=None) -> Vote:
    """Say (or change, or clear with None) how much better the winner of ``annotator``'s vote
    ``vote_id`` was, within the undo window: strength can come after the choice."""
    now = now or timezone.now()
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int)
                                 or strength not in STRENGTHS):
        raise VoteError(f"strength must be 1 (slightly), 2 (clearly) or 3 (much better), not {_shown(strength)}")
    with transaction.atomic():
        vote, _ = _amendable(annotator, vote_id, now)
        if vote.choice not in (Vote.Choice.A, Vote.Choice.B):
            raise VoteError(f"vote {vote_id} is {vote.get_choice_display()!r}: only a winner has a strength")
        Vote.objects.filter(pk=vote.pk).update(strength=strength)
        vote.strength = strength
    return vote
