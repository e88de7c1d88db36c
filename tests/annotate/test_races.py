"""Concurrency: several real database connections fighting over the same comparisons."""
from __future__ import annotations

import threading

import pytest
from django.db import connection

from annotate import services
from annotate.models import Comparison, Membership, Vote
from annotate.queue import comparison_next
from annotate.votes import ComparisonFull, vote_record
from tests.conftest import PASSWORD, make_comparisons


def _run_together(functions):
    barrier = threading.Barrier(len(functions))
    errors = []

    def run(fn):
        try:
            barrier.wait()
            fn()
        except Exception as error:  # collected and re-raised in the test thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(fn,)) for fn in functions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


@pytest.mark.django_db(transaction=True)
def test_two_clients_fight_for_the_last_comparison():
    project = services.project_create(slug="race", name="Race", votes_per_comparison=1)
    (last,) = make_comparisons(project, 1)
    people = [
        services.user_with_role(project=project, username=f"r{i}", password=PASSWORD, role=Membership.Role.ANNOTATOR)
        for i in range(2)
    ]
    outcomes = {}

    def client(user):
        def go():
            got = comparison_next(project=project, annotator=user)
            try:
                # Even the client that was given nothing tries to vote on the last comparison.
                outcomes[user.username] = vote_record(annotator=user, comparison_id=last.pk, choice="a").created
            except ComparisonFull:
                outcomes[user.username] = "full"
            outcomes[user.username + "-got"] = got and got.pk

        return go

    _run_together([client(u) for u in people])
    assert Vote.objects.filter(comparison=last).count() == 1
    assert sorted(str(outcomes[u.username]) for u in people) == ["True", "full"]
    assert [outcomes[u.username + "-got"] for u in people].count(last.pk) == 1


@pytest.mark.django_db(transaction=True)
def test_many_annotators_never_exceed_the_overlap():
    project = services.project_create(slug="swarm", name="Swarm", votes_per_comparison=2)
    make_comparisons(project, 12)
    people = [
        services.user_with_role(project=project, username=f"s{i}", password=PASSWORD, role=Membership.Role.ANNOTATOR)
        for i in range(6)
    ]

    def annotate_all(user):
        def go():
            while (c := comparison_next(project=project, annotator=user)) is not None:
                vote_record(annotator=user, comparison_id=c.pk, choice="b", idempotency_key=f"{user.pk}-{c.pk}")

        return go

    _run_together([annotate_all(u) for u in people])
    per_comparison = [c.votes.count() for c in Comparison.objects.filter(project=project)]
    assert per_comparison == [2] * 12
    assert Vote.objects.filter(comparison__project=project).count() == 24
    assert all(c.state == "closed" for c in Comparison.objects.filter(project=project))


@pytest.mark.django_db(transaction=True)
def test_simultaneous_claims_never_lease_beyond_the_overlap():
    project = services.project_create(slug="crowd", name="Crowd", votes_per_comparison=2)
    make_comparisons(project, 2)
    people = [
        services.user_with_role(project=project, username=f"c{i}", password=PASSWORD, role=Membership.Role.ANNOTATOR)
        for i in range(6)
    ]
    got = {}

    def claim(user):
        def go():
            comparison = comparison_next(project=project, annotator=user)
            got[user.username] = comparison and comparison.pk

        return go

    _run_together([claim(u) for u in people])
    taken = [pk for pk in got.values() if pk is not None]
    assert len(taken) == 4 and all(taken.count(pk) == 2 for pk in set(taken))
    assert all(c.leases.count() == 2 and c.full_until is not None for c in Comparison.objects.filter(project=project))
