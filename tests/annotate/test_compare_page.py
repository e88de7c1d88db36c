"""The annotator's comparison page: what it shows, and that it reads the comparison once.

The queue's claim already reads the prompt and both texts with the comparison, so the page
renders from that read; these counts fail if the page loads the comparison (or its prompt or
completions) a second time.
"""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate import services
from annotate.models import Vote

POSTGRESQL = connection.vendor == "postgresql"
# Session, user, project, membership; then the queue: on PostgreSQL one call of
# annotate_claim_fast, on SQLite the lease probe, SAVEPOINT, candidate (with its prompt and both
# texts), lease upsert, full mark, RELEASE; then the progress line: votes, comparisons left; then
# whether the gold rule left this person's votes out of training (annotate.gold).
FIRST_VIEW = 8 if POSTGRESQL else 13
# A reload: the same, but the queue finds the held lease (on SQLite: probe, held comparison).
RELOAD = 8 if POSTGRESQL else 9


@pytest.fixture
def page(client, project, annotator):
    client.force_login(annotator)
    return reverse("compare", args=[project.slug])


def _reads_of_the_pair(queries) -> list[str]:
    """Statements that load a prompt or a completion through the ORM (the old second read did)."""
    return [q["sql"] for q in queries if '"annotate_completion"' in q["sql"] or '"annotate_prompt"' in q["sql"]]


def test_the_page_reads_the_comparison_once(client, page, comparisons, django_assert_num_queries):
    with CaptureQueriesContext(connection) as queries, django_assert_num_queries(FIRST_VIEW):
        response = client.get(page)
    assert response.status_code == 200
    assert response.context["comparison"].pk == comparisons[0].pk
    assert _reads_of_the_pair(queries.captured_queries) == []
    with CaptureQueriesContext(connection) as queries, django_assert_num_queries(RELOAD):
        again = client.get(page, HTTP_HX_REQUEST="true")
    assert f'data-comparison="{comparisons[0].pk}"' in again.content.decode()
    assert _reads_of_the_pair(queries.captured_queries) == []


def test_the_page_shows_the_prompt_and_both_answers_escaped(client, page, project):
    prompt, _ = services.prompt_get_or_create(
        project=project, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi *there*"}]
    )
    first = services.checkpoint_get_or_create(project=project, name="ckpt-a")
    second = services.checkpoint_get_or_create(project=project, name="ckpt-b")
    a, _ = services.completion_get_or_create(prompt=prompt, checkpoint=first, text="<script>alert(1)</script> **A**")
    b, _ = services.completion_get_or_create(prompt=prompt, checkpoint=second, text='<img src=x onerror="alert(2)">B')
    services.comparison_create(first=a, second=b)
    html = client.get(page).content.decode()
    assert "Be brief." in html and "Hi <em>there</em>" in html and '<div class="turn system">' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; <strong>A</strong>" in html
    assert '&lt;img src=x onerror="alert(2)"&gt;B' in html
    assert "<script>alert" not in html and "<img" not in html


@pytest.mark.parametrize("field,value,message", [
    ("strength", "much", "strength must be 1"), ("strength", "7", "strength must be 1"),
    ("time_spent_ms", "-5", "time_spent_ms must be a whole number"),
    ("time_spent_ms", "9" * 25, "time_spent_ms must be a whole number"),
    ("rationale", "why\x00", "rationale holds a NUL"), ("choice", "c", "choice must be one of"),
])
def test_the_vote_form_refuses_a_bad_value_with_a_400_naming_it(client, page, project, comparisons, field, value,
                                                                 message):
    comparison = comparisons[0]
    client.get(page)  # shown, so leased
    form = {"choice": "a", "idempotency_key": "k1", field: value}
    response = client.post(reverse("vote", args=[project.slug, comparison.pk]), form)
    assert response.status_code == 400 and message in response.content.decode()
    assert not Vote.objects.exists()
