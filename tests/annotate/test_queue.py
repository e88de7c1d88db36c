from __future__ import annotations

from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from annotate import services
from annotate.models import Comparison, Lease, Membership
from annotate.queue import comparison_next, comparison_skip, comparisons_left
from annotate.votes import vote_record
from tests.conftest import PASSWORD, make_comparisons


def test_next_is_stable_until_voted(project, annotator, comparisons):
    first = comparison_next(project=project, annotator=annotator)
    assert comparison_next(project=project, annotator=annotator) == first
    vote_record(annotator=annotator, comparison_id=first.pk, choice="a")
    assert comparison_next(project=project, annotator=annotator) != first


def test_order_is_priority_then_age(project, annotator):
    old = make_comparisons(project, 2)
    urgent = make_comparisons(project, 1, texts=("Urgent x", "Urgent y"), priority=10)[0]
    assert comparison_next(project=project, annotator=annotator) == urgent
    vote_record(annotator=annotator, comparison_id=urgent.pk, choice="b")
    assert comparison_next(project=project, annotator=annotator) == old[0]


def test_overlap_limits_how_many_people_see_a_comparison(project, annotator):
    project.votes_per_comparison = 2
    project.save()
    (only,) = make_comparisons(project, 1)
    people = [
        services.user_with_role(project=project, username=f"p{i}", password=PASSWORD, role=Membership.Role.ANNOTATOR)
        for i in range(3)
    ]
    assert comparison_next(project=project, annotator=people[0]) == only
    assert comparison_next(project=project, annotator=people[1]) == only
    assert comparison_next(project=project, annotator=people[2]) is None


def test_expired_lease_returns_work_to_the_queue(project, annotator):
    (only,) = make_comparisons(project, 1)
    other = services.user_with_role(project=project, username="other", password=PASSWORD, role="annotator")
    assert comparison_next(project=project, annotator=annotator) == only
    assert comparison_next(project=project, annotator=other) is None
    later = timezone.now() + timedelta(seconds=project.lease_seconds + 1)
    assert comparison_next(project=project, annotator=other, now=later) == only


def test_voted_comparisons_are_never_offered_again(project, annotator):
    project.votes_per_comparison = 3
    project.save()
    make_comparisons(project, 2)
    seen = []
    while (c := comparison_next(project=project, annotator=annotator)) is not None:
        seen.append(c.pk)
        vote_record(annotator=annotator, comparison_id=c.pk, choice="tie")
    assert len(seen) == len(set(seen)) == 2
    assert comparisons_left(project=project, annotator=annotator) == 0


def test_skip_moves_on_and_frees_the_slot(project, annotator):
    first, second = make_comparisons(project, 2)
    other = services.user_with_role(project=project, username="other", password=PASSWORD, role="annotator")
    assert comparison_next(project=project, annotator=annotator) == first
    comparison_skip(comparison=first, annotator=annotator)
    assert comparison_next(project=project, annotator=annotator) == second
    assert comparison_next(project=project, annotator=other) == first


def test_positions_are_randomised_and_stored(project):
    comparisons = make_comparisons(project, 40)
    a_from_first = sum(c.completion_a.checkpoint.name == "ckpt-a" for c in comparisons)
    assert 5 < a_from_first < 35  # both orders occur
    stored = Comparison.objects.get(pk=comparisons[0].pk)
    assert stored.completion_a_id == comparisons[0].completion_a_id


def test_closed_comparisons_leave_the_queue(project, annotator):
    (only,) = make_comparisons(project, 1)
    vote_record(annotator=annotator, comparison_id=only.pk, choice="a")
    only.refresh_from_db()
    assert only.state == Comparison.State.CLOSED
    assert not Lease.objects.filter(comparison=only).exists()


def _annotators(project, n: int, prefix: str = "p"):
    return [
        services.user_with_role(project=project, username=f"{prefix}{i}", password=PASSWORD, role="annotator")
        for i in range(n)
    ]


def test_a_full_comparison_is_marked_until_its_first_lease_expires(project, annotator):
    project.votes_per_comparison = 2
    project.save()
    (only,) = make_comparisons(project, 1)
    first, second, third = _annotators(project, 3)
    start = timezone.now()
    assert comparison_next(project=project, annotator=first, now=start) == only
    only.refresh_from_db()
    assert only.full_until is None  # one slot of two still free
    assert comparison_next(project=project, annotator=second, now=start + timedelta(seconds=60)) == only
    only.refresh_from_db()
    assert only.full_until == start + timedelta(seconds=project.lease_seconds)
    assert comparison_next(project=project, annotator=third, now=start + timedelta(seconds=61)) is None
    # The first lease has expired, the second is still live: one slot comes back.
    later = start + timedelta(seconds=project.lease_seconds)
    assert comparison_next(project=project, annotator=third, now=later) == only
    assert Lease.objects.filter(comparison=only, expires_at__gt=later).count() == 2


def test_an_early_hint_never_lets_a_comparison_overfill(project, annotator):
    (only,) = make_comparisons(project, 1)
    (other,) = _annotators(project, 1)
    assert comparison_next(project=project, annotator=annotator) == only
    # A hint in the past (as after a vote released a lease) only costs a count, never a slot.
    Comparison.objects.filter(pk=only.pk).update(full_until=timezone.now() - timedelta(days=1))
    assert comparison_next(project=project, annotator=other) is None
    Comparison.objects.filter(pk=only.pk).update(full_until=None)
    assert comparison_next(project=project, annotator=other) is None


def test_skip_clears_the_mark(project, annotator):
    (only,) = make_comparisons(project, 1)
    assert comparison_next(project=project, annotator=annotator) == only
    only.refresh_from_db()
    assert only.full_until is not None
    comparison_skip(comparison=only, annotator=annotator)
    only.refresh_from_db()
    assert only.full_until is None


def test_raising_the_overlap_reopens_full_comparisons_at_once(client, project, annotator, manager):
    (only,) = make_comparisons(project, 1)
    (other,) = _annotators(project, 1)
    assert comparison_next(project=project, annotator=annotator) == only
    assert comparison_next(project=project, annotator=other) is None
    client.login(username="manager", password=PASSWORD)
    form = {"name": project.name, "guidelines": project.guidelines, "votes_per_comparison": 2,
            "retrain_threshold": project.retrain_threshold, "lease_seconds": project.lease_seconds,
            "training_sources": project.training_sources, "gold_rate": project.gold_rate,
            "gold_threshold": project.gold_threshold, "gold_min_votes": project.gold_min_votes,
            "aggregation": project.aggregation, "reliability_every": project.reliability_every}
    assert client.post(reverse("manage-settings", args=[project.slug]), form).status_code == 302
    project.refresh_from_db()
    assert comparison_next(project=project, annotator=other) == only
