"""The query budget of the annotation hot path: next comparison + vote over the JSON API.

``bench/vote_http.py`` measures latency and throughput over real HTTP; this test pins
how many statements each call sends, so a change that adds a round trip to every
annotation fails here instead of showing up later as a slower benchmark.

Counts are taken inside the test transaction, where ``transaction.atomic`` issues
SAVEPOINT/RELEASE instead of BEGIN/COMMIT (the same number of statements), and where
on-commit receivers (the retrain check in ``training``) do not run.
"""
from __future__ import annotations

import json

import pytest
from django.db import connection

from annotate.models import Lease, Vote
from annotate.tokens import token_create

POSTGRESQL = connection.vendor == "postgresql"
# next: token with project, role and held-lease probe, then on PostgreSQL one call of
# annotate_claim_fast; on SQLite SAVEPOINT, candidate, lease upsert, full mark, RELEASE.
NEXT_BUDGET = 2 if POSTGRESQL else 6
# next while holding a lease (a reload): token with project, role and probe, held comparison.
RELOAD_BUDGET = 2
# vote: token with the comparison's project and role, then on PostgreSQL one call of
# annotate_vote_fast (in a SAVEPOINT here, inside the test's transaction; none in production);
# on SQLite SAVEPOINT, comparison (locked) with earlier votes and lease, lease count, INSERT
# vote, UPDATE count, DELETE lease, RELEASE.
VOTE_BUDGET = 4 if POSTGRESQL else 8
# vote with "next": true: the vote, then what next sends after the token.
VOTE_AND_NEXT_BUDGET = VOTE_BUDGET + NEXT_BUDGET - 1


@pytest.fixture
def api(api):
    api("get", "/api/projects")  # the first call of the minute also records when the token was used
    return api


def test_next_and_vote_stay_within_their_query_budget(
    api, project, comparisons, django_assert_max_num_queries
):
    with django_assert_max_num_queries(NEXT_BUDGET):
        pair = api("get", "/api/projects/demo/comparisons/next")
    assert pair.status_code == 200
    with django_assert_max_num_queries(RELOAD_BUDGET):
        again = api("get", "/api/projects/demo/comparisons/next")
    assert again.json() == pair.json()
    with django_assert_max_num_queries(VOTE_BUDGET):
        vote = api("post", f"/api/comparisons/{pair.json()['id']}/vote", {"choice": "a", "idempotency_key": "k"})
    assert vote.status_code == 201
    assert Vote.objects.filter(comparison_id=pair.json()["id"]).count() == 1
    assert not Lease.objects.filter(comparison_id=pair.json()["id"]).exists()


def test_the_budget_does_not_grow_with_the_queue(api, project, django_assert_max_num_queries):
    from tests.conftest import make_comparisons

    make_comparisons(project, 60)
    for _ in range(3):
        with django_assert_max_num_queries(NEXT_BUDGET):
            pair = api("get", "/api/projects/demo/comparisons/next").json()
        with django_assert_max_num_queries(VOTE_BUDGET):
            assert api("post", f"/api/comparisons/{pair['id']}/vote", {"choice": "tie"}).status_code == 201


def test_vote_with_next_stays_within_its_query_budget(api, project, django_assert_max_num_queries):
    from tests.conftest import make_comparisons

    make_comparisons(project, 10)
    pair = api("get", "/api/projects/demo/comparisons/next").json()
    for _ in range(3):
        with django_assert_max_num_queries(VOTE_AND_NEXT_BUDGET):
            response = api("post", f"/api/comparisons/{pair['id']}/vote", {"choice": "b", "next": True})
        assert response.status_code == 201
        pair = response.json()["next"]


def test_only_members_vote_through_the_api(client, outsider, comparisons):
    token = token_create(user=outsider)
    response = client.post(
        f"/api/comparisons/{comparisons[0].pk}/vote",
        data=json.dumps({"choice": "a"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 404
    assert not Vote.objects.exists()


def test_voting_on_a_missing_comparison_is_404(api, project):
    assert api("post", "/api/comparisons/999999/vote", {"choice": "a"}).status_code == 404
