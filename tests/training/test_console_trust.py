"""The Annotators page as a data lead uses it: gold accuracy, exclusions on record, reinstating, sorting,
and the AI judge's agreement with people next to people's own."""
from __future__ import annotations

import pytest
from django.urls import reverse

from annotate import gold, services, stats
from annotate.models import Exclusion, Membership, Vote
from annotate.votes import vote_record
from tests.conftest import PASSWORD, make_comparisons


@pytest.fixture
def crowd(project):
    people = [services.user_with_role(project=project, username=name, password=PASSWORD,
                                      role=Membership.Role.ANNOTATOR) for name in ("ann", "bob", "cid")]
    judge = services.user_with_role(project=project, username="sim-judge", password=PASSWORD,
                                    role=Membership.Role.ANNOTATOR)
    project.votes_per_comparison = 4
    project.save()
    return people, judge


def test_judge_agreement_is_measured_against_the_people_majority(project, crowd):
    (ann, bob, cid), judge = crowd
    comparisons = make_comparisons(project, 4)
    # People: a, a, b on every pair (a person agrees with the others' majority 2 times in 3 when the
    # others split... here: ann and bob with each other, cid against). The judge picks "a" on 3, "b" on 1.
    for i, comparison in enumerate(comparisons):
        for person, choice in ((ann, "a"), (bob, "a"), (cid, "b")):
            vote_record(annotator=person, comparison_id=comparison.pk, choice=choice)
        vote_record(annotator=judge, comparison_id=comparison.pk, choice="a" if i < 3 else "b", source=Vote.Source.AI)
    result = stats.judge_agreement(project=project)
    assert result.comparisons == 4
    assert (result.judge, result.judge_compared) == (0.75, 4)
    # Leave-one-out: ann (others a, b: split, not counted), bob (same), cid (others a, a: majority a, cid wrong).
    assert (result.people, result.people_compared) == (0.0, 4)


def test_the_page_shows_gold_accuracy_and_exclusions_and_a_manager_reinstates(client, project, manager, crowd):
    (ann, bob, _), _ = crowd
    comparisons = make_comparisons(project, 2)
    for person in (ann, bob):
        vote_record(annotator=person, comparison_id=comparisons[0].pk, choice="a")
    made = gold.gold_import(project=project, rows=[{"prompt": f"q{i}", "chosen": "right", "rejected": "wrong"}
                                                   for i in range(5)])
    for comparison in made:  # ann is right 5 of 5, bob 1 of 5
        vote_record(annotator=ann, comparison_id=comparison.pk, choice=comparison.gold_answer)
    for i, comparison in enumerate(made):
        vote_record(annotator=bob, comparison_id=comparison.pk,
                    choice=comparison.gold_answer if i == 0 else {"a": "b", "b": "a"}[comparison.gold_answer])
    gold.exclusion_add(project=project, user_id=bob.pk, by=manager, reason="misses the check pairs")
    client.force_login(manager)
    page = reverse("console-annotators", args=[project.slug])
    html = client.get(page + "?sort=gold").content.decode()
    assert html.index('data-annotator="bob"') < html.index('data-annotator="ann"')  # worst gold first
    row = html[html.index('data-annotator="bob"'):]
    row = row[:row.index("</tr>")]
    assert "20% <span class=\"muted\">[4–62] of 5</span>" in row and "excluded" in row and "misses the check pairs" in row

    standing = reverse("console-annotator-standing", args=[project.slug])
    assert client.post(standing, {"user": "x", "action": "reinstate"}).status_code == 400
    assert client.post(standing, {"user": ann.pk, "action": "exclude", "reason": ""}).status_code == 400
    client.post(standing, {"user": bob.pk, "action": "reinstate", "reason": "talked it through"})
    exclusion = Exclusion.objects.get(user=bob)
    assert exclusion.lifted_by == manager and exclusion.lift_reason == "talked it through"
    history = client.get(page).content.decode()
    assert "talked it through" in history and "misses the check pairs" in history


def test_annotators_cannot_change_standings(client, project, crowd):
    (ann, bob, _), _ = crowd
    client.force_login(ann)
    response = client.post(reverse("console-annotator-standing", args=[project.slug]),
                           {"user": bob.pk, "action": "exclude", "reason": "rival"})
    assert response.status_code == 403 and not Exclusion.objects.exists()


def test_an_excluded_person_sees_a_notice(client, project, manager, crowd):
    (ann, _, _), _ = crowd
    make_comparisons(project, 1)
    client.force_login(ann)
    page = reverse("compare", args=[project.slug])
    assert "data-excluded" not in client.get(page).content.decode()
    gold.exclusion_add(project=project, user_id=ann.pk, by=manager, reason="test")
    assert "your votes are not used for training for now" in client.get(page).content.decode()


def test_the_dashboard_says_what_the_next_snapshot_leaves_out_and_why(client, project, manager, crowd, settings,
                                                                       tmp_path):
    from annotate.snapshots import snapshot_freeze

    settings.ARTIFACTS_DIR = tmp_path
    (ann, bob, cid), judge = crowd
    comparisons = make_comparisons(project, 3)
    for person in (ann, bob, cid):
        vote_record(annotator=person, comparison_id=comparisons[0].pk, choice="a")
    vote_record(annotator=judge, comparison_id=comparisons[1].pk, choice="a", source=Vote.Source.AI)
    (made,) = gold.gold_import(project=project, rows=[{"prompt": "q", "chosen": "right", "rejected": "wrong"}])
    vote_record(annotator=ann, comparison_id=made.pk, choice=made.gold_answer)
    gold.exclusion_add(project=project, user_id=cid.pk, by=manager, reason="test")
    client.force_login(manager)
    html = client.get(reverse("console-dashboard", args=[project.slug])).content.decode()
    block = html[html.index("data-left-out"):]
    block = block[:block.index("</section>")]
    assert "<strong>1</strong> vote on gold pairs" in block
    assert "<strong>1</strong> vote by people excluded from training" in block
    assert "<strong>1</strong> vote from sources the project does not train on (it trains on: human, imported, simulated)" in block
    assert snapshot_freeze(project=project).votes == 2  # ann's and bob's ordinary votes: what the page promised
