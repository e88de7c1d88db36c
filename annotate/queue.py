"""The comparison queue: which comparison an annotator sees next.

Contract of ``comparison_next``: the comparison returned is open, in the project,
not yet voted (nor skipped) by this annotator, and holding it does not push the
comparison past the project's overlap (votes plus other people's live leases stay
below ``votes_per_comparison``). Order: priority (high first), then age. None means
nothing is left for this annotator, not merely that other people hold row locks (short
of losing ``ROUNDS`` races in a row).

Concurrency: on PostgreSQL the first candidate row is locked with
``FOR UPDATE SKIP LOCKED`` and the capacity is counted again under the lock (in the
statement that writes the lease), so two annotators asking at once never both take
the last slot. When every candidate is locked by someone else at that instant, the
request waits for the first one instead of giving up. On SQLite the database runs
transactions in IMMEDIATE mode (see settings), which serialises them.

Skipping full rows: with many annotators the head of the queue is a run of comparisons other
people are holding, and counting the live leases of each one made every claim cost as many
subqueries as there were annotators. So a comparison carries ``full_until``, a hint that it is
certainly full until then: a lease that fills it sets it to the first expiry among its live
leases (when the first slot can come back on its own), a skip clears it, and the scan steps over
rows whose hint lies in the future before counting anything. The hint may be early (a vote
deletes a lease without moving it), never late (raising the overlap clears a project's hints,
``comparison_hints_clear``), so the exact count under the row lock stays the judge, and an
expired lease makes its comparison claimable again without anyone writing to it.

Speed: this is half of every annotation, so its statements are written out in SQL
(portable between PostgreSQL and SQLite): building the same queries with the ORM
cost several times more CPU than running them. It takes a fixed number of round
trips, locked in by ``tests/annotate/test_api_perf.py``: a one-table probe for a held
lease (skipped when the caller already knows, as the API does from its token lookup),
then one transaction of candidate read and lease upsert (with the hint; SQLite updates the hint
in a statement of its own).
"""
from __future__ import annotations

import json
import random
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from annotate import sql
from annotate.models import Comparison, Lease, Project

# How many times one request starts over after losing a race for its candidate.
ROUNDS = 10
_RETRY = object()

# The pair is shown at once, so the prompt and both texts come with the comparison, as the
# attributes ``prompt_messages`` (the message list), ``text_a`` and ``text_b``: the page and the
# API render from this one read and never load the comparison again.
_COLUMNS = ("id", "project_id", "prompt_id", "completion_a_id", "completion_b_id", "priority", "reason", "state",
            "vote_count")
_DISPLAY = f"""
    SELECT {", ".join("c." + name for name in _COLUMNS)}, p.messages, a.text, b.text
    FROM annotate_comparison c
    JOIN annotate_prompt p ON p.id = c.prompt_id
    JOIN annotate_completion a ON a.id = c.completion_a_id
    JOIN annotate_completion b ON b.id = c.completion_b_id
"""

# Most requests hold no lease (voting deletes it), so a one-table probe goes first.
_ANY_HELD = "SELECT 1 FROM annotate_lease WHERE annotator_id = %s AND expires_at > %s AND skipped = %s LIMIT 1"
# The annotator's live lease in this project whose comparison is still open (or gold) and unvoted.
_HELD = _DISPLAY + """
    JOIN annotate_lease l ON l.comparison_id = c.id
    WHERE l.annotator_id = %s AND l.expires_at > %s AND l.skipped = %s
      AND c.project_id = %s AND c.state IN (%s, %s)
      AND NOT EXISTS (SELECT 1 FROM annotate_vote v WHERE v.comparison_id = c.id AND v.annotator_id = %s)
    ORDER BY l.created_at
    LIMIT 1
"""

# Open, not certainly full (the cheap hint first), not voted or skipped by this annotator, and room
# left once other people's live leases are counted.
# Parameters: project, state, now, annotator, annotator, True, now, annotator, wanted.
_OPEN_FOR = """
    WHERE c.project_id = %s AND c.state = %s AND (c.full_until IS NULL OR c.full_until <= %s)
      AND NOT EXISTS (SELECT 1 FROM annotate_vote v WHERE v.comparison_id = c.id AND v.annotator_id = %s)
      AND NOT EXISTS (SELECT 1 FROM annotate_lease s
                      WHERE s.comparison_id = c.id AND s.annotator_id = %s AND s.skipped = %s)
      AND c.vote_count + (SELECT COUNT(*) FROM annotate_lease o
                          WHERE o.comparison_id = c.id AND o.expires_at > %s AND o.annotator_id <> %s) < %s
"""
# Queue order; the ``queue_order`` index serves it, so the LIMIT stops the scan early.
_CANDIDATE = _DISPLAY + _OPEN_FOR + "ORDER BY c.priority DESC, c.created_at, c.id LIMIT 1"
_ANY_LEFT = "SELECT 1 FROM annotate_comparison c" + _OPEN_FOR + "LIMIT 1"

# Take or renew the lease only if, counted now (a new statement, so a fresh snapshot, under the
# row lock), votes plus other people's live leases leave room. Returns a row when it leased.
# Parameters: comparison, annotator, expires, False, now, comparison, comparison, now, annotator, wanted.
_LEASE = """
    INSERT INTO annotate_lease (comparison_id, annotator_id, expires_at, skipped, created_at)
    SELECT %s, %s, %s, %s, %s
    WHERE (SELECT vote_count FROM annotate_comparison WHERE id = %s)
        + (SELECT COUNT(*) FROM annotate_lease o
           WHERE o.comparison_id = %s AND o.expires_at > %s AND o.annotator_id <> %s) < %s
    ON CONFLICT (comparison_id, annotator_id)
    DO UPDATE SET expires_at = excluded.expires_at, created_at = excluded.created_at
    RETURNING id
"""
# SQLite, after a lease was taken: if the comparison is now full, the hint becomes the first expiry
# among its live leases. Parameters: comparison, now, comparison, comparison, now, wanted.
_MARK_FULL = """
    UPDATE annotate_comparison
    SET full_until = (SELECT MIN(expires_at) FROM annotate_lease WHERE comparison_id = %s AND expires_at > %s)
    WHERE id = %s
      AND vote_count + (SELECT COUNT(*) FROM annotate_lease WHERE comparison_id = %s AND expires_at > %s) >= %s
"""
# PostgreSQL: both in one statement (the CTEs share one snapshot, so the new lease is added by
# hand: +1 and LEAST with its expiry), and the lease's commit need not wait for the WAL flush. A
# lease is a soft reservation: if the server crashed before it reached the disk, the pair would
# only go back to the queue, and vote_record re-checks the overlap under its own lock; a vote's
# commit still waits. set_config(..., true) is SET LOCAL, sent with the statement to save a round
# trip. Parameters: comparison, now, annotator, wanted, comparison, wanted, then the new lease's five
# columns (comparison, annotator, expires, False, now), then expires, comparison.
_LEASE_PG = """
    WITH others AS (
        SELECT COUNT(*) AS n, MIN(expires_at) AS first FROM annotate_lease
        WHERE comparison_id = %s AND expires_at > %s AND annotator_id <> %s),
    room AS (
        SELECT c.vote_count + others.n AS taken, others.first, %s AS wanted
        FROM annotate_comparison c CROSS JOIN others
        WHERE c.id = %s AND c.vote_count + others.n < %s
          AND set_config('synchronous_commit', 'off', true) = 'off'),
    lease AS (
        INSERT INTO annotate_lease (comparison_id, annotator_id, expires_at, skipped, created_at)
        SELECT %s, %s, %s, %s, %s FROM room
        ON CONFLICT (comparison_id, annotator_id)
        DO UPDATE SET expires_at = excluded.expires_at, created_at = excluded.created_at
        RETURNING id),
    mark AS (
        UPDATE annotate_comparison SET full_until = LEAST(%s, room.first) FROM room
        WHERE id = %s AND room.taken + 1 >= room.wanted AND EXISTS (SELECT 1 FROM lease))
    SELECT id FROM lease
"""


# PostgreSQL: the held lease, or a claim (candidate, lease and full mark), in one call of the
# function ``annotate_claim_fast`` (migration 0003) in its own implicit transaction, instead of up
# to six round trips. No row means nothing left, or nothing it could take without waiting for a
# row lock; the general path then looks again. Parameters: project, annotator, now, wanted,
# lease seconds, whether to look for a held lease.
_CLAIM_FAST = ("SELECT * FROM annotate_claim_fast(%s::bigint, %s::bigint, %s::timestamptz, %s::integer,"
               " %s::integer, %s::boolean)")


def _first(query: str, params: tuple) -> Comparison | None:
    """The first row of a ``_DISPLAY`` query as a Comparison (other fields load on first access)."""
    row = sql.row(query, params)
    if row is None:
        return None
    n = len(_COLUMNS)
    comparison = Comparison.from_db(connection.alias, _COLUMNS, row[:n])
    messages, comparison.text_a, comparison.text_b = row[n:]
    # Raw SQL hands JSON back as text on some backends (SQLite), decoded on others.
    comparison.prompt_messages = json.loads(messages) if isinstance(messages, str) else messages
    return comparison


def _held_lease(*, project: Project, annotator, now, probe: bool) -> Comparison | None:
    if probe and sql.row(_ANY_HELD, (annotator.pk, now, False)) is None:
        return None
    return _first(_HELD, (annotator.pk, now, False, project.pk, Comparison.State.OPEN, Comparison.State.GOLD,
                          annotator.pk))


def _reserve(*, project: Project, annotator, now):
    """One attempt inside a transaction: a comparison, None (nothing left), or _RETRY (lost a race)."""
    wanted = project.votes_per_comparison
    me = annotator.pk
    params = (project.pk, Comparison.State.OPEN, now, me, me, True, now, me, wanted)
    if not connection.features.has_select_for_update_skip_locked:
        # SQLite: the IMMEDIATE transaction already keeps everyone else out.
        comparison = _first(_CANDIDATE, params)
    else:
        comparison = _first(_CANDIDATE + " FOR UPDATE OF c SKIP LOCKED", params)
        if comparison is None:
            # Everything left may be locked by people taking it right now. Wait for the first row;
            # this transaction holds no row lock yet, so the wait cannot be part of a deadlock.
            comparison = _first(_CANDIDATE + " FOR UPDATE OF c", params)
            if comparison is None:
                # A row that changed while we waited drops out of a locking LIMIT query; look again.
                return _RETRY if sql.row(_ANY_LEFT, params) is not None else None
    if comparison is None:
        return None
    expires = now + timedelta(seconds=project.lease_seconds)
    pk = comparison.pk
    if connection.vendor == "postgresql":
        lease = sql.row(_LEASE_PG, (pk, now, me, wanted, pk, wanted, pk, me, expires, False, now, expires, pk))
    else:
        lease = sql.row(_LEASE, (pk, me, expires, False, now, pk, pk, now, me, wanted))
        if lease is not None:
            sql.execute(_MARK_FULL, (pk, now, pk, pk, now, wanted))
    return comparison if lease is not None else _RETRY


# Gold (annotate.gold): a comparison with a known answer, for anyone who has neither voted on it nor been
# shown it, in random order; no overlap applies. Parameters: project, state, annotator, annotator.
_GOLD = _DISPLAY + """
    WHERE c.project_id = %s AND c.state = %s
      AND NOT EXISTS (SELECT 1 FROM annotate_vote v WHERE v.comparison_id = c.id AND v.annotator_id = %s)
      AND NOT EXISTS (SELECT 1 FROM annotate_lease s WHERE s.comparison_id = c.id AND s.annotator_id = %s)
    ORDER BY RANDOM() LIMIT 1
"""


def _gold(*, project: Project, annotator, now, holds_lease: bool | None) -> Comparison | None:
    """A gold comparison leased to ``annotator``, unless they hold a pair already (a reload shows it again)."""
    if holds_lease or (holds_lease is None and sql.row(_ANY_HELD, (annotator.pk, now, False)) is not None):
        return None
    gold = _first(_GOLD, (project.pk, Comparison.State.GOLD, annotator.pk, annotator.pk))
    if gold is not None:
        Lease.objects.update_or_create(comparison_id=gold.pk, annotator=annotator, defaults={
            "expires_at": now + timedelta(seconds=project.lease_seconds), "skipped": False, "created_at": now})
    return gold


def comparison_next(*, project: Project, annotator, now=None, holds_lease: bool | None = None) -> Comparison | None:
    """Reserve and return the next comparison for ``annotator``, or None when nothing is left.

    Calling it again before voting returns the same comparison (the live lease),
    so a reload never burns a slot. With probability ``project.gold_rate`` a gold comparison
    (``annotate.gold``) comes instead, when the annotator holds no pair and has gold left to see; a
    held gold pair comes back on a reload like any other. The comparison carries what the page shows,
    read with it:
    ``prompt_messages`` (the prompt's list of role/content messages), ``text_a`` and ``text_b``.
    ``holds_lease`` is whether the annotator holds any live, unskipped lease, when the
    caller has already read it (False skips looking for a held comparison); None: look.
    """
    now = now or timezone.now()
    if project.gold_count and project.gold_rate > 0 and random.random() < project.gold_rate:
        gold = _gold(project=project, annotator=annotator, now=now, holds_lease=holds_lease)
        if gold is not None:
            return gold
    if project.gold_count and holds_lease is not False and connection.vendor == "postgresql":
        # PostgreSQL's one-call claim knows only open pairs; in a project with gold, a held gold pair
        # must come back on a reload too, so the held lease is looked up here first.
        held = _held_lease(project=project, annotator=annotator, now=now, probe=holds_lease is None)
        if held is not None:
            return held
        holds_lease = False
    if connection.vendor == "postgresql":
        fast = _first(_CLAIM_FAST, (project.pk, annotator.pk, now, project.votes_per_comparison,
                                    project.lease_seconds, holds_lease is not False))
        if fast is not None:
            return fast
    held = None
    if holds_lease is not False:
        held = _held_lease(project=project, annotator=annotator, now=now, probe=holds_lease is None)
    if held is not None:
        return held
    for _ in range(ROUNDS):
        # Each round is its own transaction holding at most one row lock, and sees a fresh snapshot.
        with transaction.atomic():
            outcome = _reserve(project=project, annotator=annotator, now=now)
        if outcome is not _RETRY:
            return outcome
    return None


def comparison_skip(*, comparison: Comparison, annotator, now=None) -> None:
    """Give a comparison back to the queue and never offer it to this annotator again."""
    now = now or timezone.now()
    with transaction.atomic():
        Lease.objects.update_or_create(
            comparison=comparison, annotator=annotator, defaults={"expires_at": now, "skipped": True}
        )
        # The slot is free now, earlier than the hint said.
        Comparison.objects.filter(pk=comparison.pk, full_until__gt=now).update(full_until=None)


def comparison_hints_clear(*, project: Project) -> None:
    """Forget which comparisons of ``project`` are full: call it when their overlap grows, since a
    comparison full under the old overlap may have room under the new one."""
    Comparison.objects.filter(project=project, full_until__isnull=False).update(full_until=None)


def comparisons_left(*, project: Project, annotator) -> int:
    """How many comparisons this annotator could still be given (an estimate; ignores leases)."""
    skipped = Lease.objects.filter(annotator=annotator, skipped=True).values("comparison")
    return (
        Comparison.objects.open()
        .filter(project=project, vote_count__lt=project.votes_per_comparison)
        .not_voted_by(annotator)
        .exclude(pk__in=skipped)
        .count()
    )
