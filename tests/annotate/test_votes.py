from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Comparison, Vote
from annotate.queue import comparison_next
from annotate.votes import ComparisonFull, IdempotencyConflict, VoteError, vote_record
from tests.conftest import PASSWORD, make_comparisons


def test_winner_is_stored_as_the_completion(project, annotator, comparisons):
    c = comparisons[0]
    vote = vote_record(annotator=annotator, comparison_id=c.pk, choice="b", strength=2).vote
    assert vote.winner_id == c.completion_b_id
    assert vote.strength == 2


def test_tie_has_no_winner_or_strength(project, annotator, comparisons):
    vote = vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="tie", strength=3).vote
    assert vote.winner_id is None and vote.strength is None


def test_same_idempotency_key_returns_the_first_vote_and_another_choice_is_a_conflict(project, annotator, comparisons):
    first = vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a", idempotency_key="k1")
    again = vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a", idempotency_key="k1")
    assert first.created and not again.created
    assert again.vote.pk == first.vote.pk and again.vote.choice == "a"
    with pytest.raises(IdempotencyConflict, match="you already voted 'a' on comparison .* with this idempotency_key"
                                                  " and a vote is final: 'b' was not recorded"):
        vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="b", idempotency_key="k1")
    assert Vote.objects.count() == 1 and Vote.objects.get().choice == "a"


def test_key_reused_on_another_comparison_is_refused(project, annotator, comparisons):
    vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a", idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        vote_record(annotator=annotator, comparison_id=comparisons[1].pk, choice="a", idempotency_key="k1")
    assert Vote.objects.count() == 1


def test_second_vote_on_same_comparison_is_not_a_second_row(project, annotator, comparisons):
    vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a")
    outcome = vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a")
    assert not outcome.created and outcome.vote.choice == "a"
    with pytest.raises(IdempotencyConflict, match="you already voted 'a'"):
        vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="b")
    assert Vote.objects.count() == 1


def test_vote_beyond_the_overlap_is_refused(project, annotator):
    (only,) = make_comparisons(project, 1)
    other = services.user_with_role(project=project, username="other", password=PASSWORD, role="annotator")
    vote_record(annotator=annotator, comparison_id=only.pk, choice="a")
    with pytest.raises(ComparisonFull):
        vote_record(annotator=other, comparison_id=only.pk, choice="b")
    assert Vote.objects.count() == 1


def test_a_vote_after_ones_hold_passed_to_someone_who_completed_it_says_so(project, annotator):
    from datetime import timedelta

    from django.utils import timezone

    from annotate.models import Lease
    from annotate.queue import comparison_next

    (only,) = make_comparisons(project, 1)
    other = services.user_with_role(project=project, username="other", password=PASSWORD, role="annotator")
    assert comparison_next(project=project, annotator=annotator).pk == only.pk  # shown to the first annotator
    ran_out = timezone.now() - timedelta(minutes=1)  # as if its hold's time went by
    Lease.objects.filter(annotator=annotator).update(expires_at=ran_out)
    Comparison.objects.filter(pk=only.pk).update(full_until=ran_out)
    assert comparison_next(project=project, annotator=other).pk == only.pk  # their hold ran out: it passes on
    vote_record(annotator=other, comparison_id=only.pk, choice="b")
    with pytest.raises(ComparisonFull, match="your hold on this comparison ran out at .* UTC and it passed to "
                                             "another annotator, who completed it"):
        vote_record(annotator=annotator, comparison_id=only.pk, choice="a")
    assert Vote.objects.count() == 1


def test_a_live_lease_of_someone_else_reserves_the_slot(project, annotator):
    (only,) = make_comparisons(project, 1)
    other = services.user_with_role(project=project, username="other", password=PASSWORD, role="annotator")
    assert comparison_next(project=project, annotator=annotator) == only
    with pytest.raises(ComparisonFull):
        vote_record(annotator=other, comparison_id=only.pk, choice="b")


@pytest.mark.parametrize(
    "kwargs",
    [{"choice": "c"}, {"choice": "a", "strength": 7}, {"choice": "a", "rationale": "x" * 10_001}],
)
def test_invalid_votes_are_refused_with_a_reason(project, annotator, comparisons, kwargs):
    with pytest.raises(VoteError) as error:
        vote_record(annotator=annotator, comparison_id=comparisons[0].pk, **kwargs)
    assert str(error.value)
    assert Vote.objects.count() == 0


def test_time_spent_is_measured_from_when_the_pair_was_shown(project, annotator, comparisons):
    from datetime import timedelta

    from django.utils import timezone

    shown = comparison_next(project=project, annotator=annotator)
    later = timezone.now() + timedelta(seconds=7)
    vote = vote_record(annotator=annotator, comparison_id=shown.pk, choice="a", now=later).vote
    assert 6_500 < vote.time_spent_ms < 8_000


def test_the_returned_vote_is_the_stored_row(project, annotator, comparisons):
    # On PostgreSQL a first vote goes through the function annotate_vote_fast; the object it
    # answers with must be the row, field for field, as on the general path.
    shown = comparison_next(project=project, annotator=annotator)
    outcome = vote_record(annotator=annotator, comparison_id=shown.pk, choice="b", strength=3,
                          rationale="  clearer  ", idempotency_key="k1")
    stored = Vote.objects.get(pk=outcome.vote.pk)
    fields = [f.attname for f in Vote._meta.concrete_fields]
    assert [getattr(outcome.vote, name) for name in fields] == [getattr(stored, name) for name in fields]
    assert (stored.rationale, stored.winner_id, stored.strength) == ("clearer", shown.completion_b_id, 3)
    assert stored.time_spent_ms is not None
    shown.refresh_from_db()
    assert (shown.vote_count, shown.state, shown.leases.count()) == (1, "closed", 0)
