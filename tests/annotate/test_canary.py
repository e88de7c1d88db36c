"""The canary set: pairs held out of all training, their labels frozen once voted."""
from __future__ import annotations

import random

import pytest
from django.core.management import call_command

from annotate import services, snapshots
from annotate.canary import canary_draw, canary_freeze, canary_hold, canary_pairs, majority
from annotate.exports import export_rows
from annotate.models import Comparison, Membership
from annotate.votes import vote_record, vote_withdraw
from tests.conftest import PASSWORD, make_comparisons


def _completions(project, n):
    first = services.checkpoint_get_or_create(project=project, name="one")
    second = services.checkpoint_get_or_create(project=project, name="two")
    pairs = []
    for i in range(n):
        prompt, _ = services.prompt_get_or_create(project=project, messages=f"Canary question {i}?")
        a, _ = services.completion_get_or_create(prompt=prompt, checkpoint=first, text=f"first {i}")
        b, _ = services.completion_get_or_create(prompt=prompt, checkpoint=second, text=f"second {i}")
        pairs.append((a, b))
    return pairs


def test_new_comparisons_become_canaries_at_the_rate_and_never_battles(project):
    project.canary_rate = 0.25
    project.save(update_fields=["canary_rate"])
    pairs = _completions(project, 200)
    services.comparisons_create(pairs=pairs[:100], rng=random.Random(1))
    services.comparisons_create(pairs=pairs[100:], reason=Comparison.Reason.BATTLE, rng=random.Random(1))
    marked = Comparison.objects.filter(project=project, canary=True)
    assert 10 <= marked.count() <= 45
    assert not marked.filter(reason=Comparison.Reason.BATTLE).exists()
    # Deterministic: the same pairs are canaries whichever way they are created.
    expected = {frozenset((a.pk, b.pk)) for a, b in pairs[:100]
                if canary_draw(rate=0.25, first_id=a.pk, second_id=b.pk)}
    assert {frozenset((c.completion_a_id, c.completion_b_id)) for c in marked} == expected
    one, _ = services.comparison_create(first=pairs[0][0], second=pairs[0][1])  # already stored: returned as is
    assert one.canary == (frozenset((pairs[0][0].pk, pairs[0][1].pk)) in expected)


def test_no_canaries_at_rate_zero(project):
    make_comparisons(project, 20)
    assert not Comparison.objects.filter(canary=True).exists()


def test_the_command_holds_open_unvoted_comparisons(project, annotator):
    made = make_comparisons(project, 6)
    vote_record(annotator=annotator, comparison_id=made[0].pk, choice="a")
    call_command("canary", project=project.slug, hold=10, seed=3)
    held = set(Comparison.objects.filter(canary=True).values_list("pk", flat=True))
    assert held == {c.pk for c in made[1:]}  # the voted one is not eligible
    assert canary_hold(project=project, count=3) == 0


@pytest.fixture
def voters(project):
    return [services.user_with_role(project=project, username=f"voter{i}", password=PASSWORD,
                                    role=Membership.Role.ANNOTATOR) for i in range(3)]


def test_canary_votes_never_reach_training_data_but_the_audit_export_keeps_them(project, annotator, settings,
                                                                                   tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    made = make_comparisons(project, 3)
    canary_hold(project=project, count=1)
    canary = Comparison.objects.get(canary=True)
    for comparison in made:
        vote_record(annotator=annotator, comparison_id=comparison.pk, choice="a")
    for fmt in ("trl", "pairs", "kto", "hh-rlhf"):
        assert canary.completion_a.text not in str(list(export_rows(project=project, fmt=fmt)))
    assert len(list(export_rows(project=project, fmt="pairs"))) == 2
    frozen = snapshots.snapshot_freeze(project=project)
    assert frozen.count == 2 and canary.completion_a.text not in snapshots.snapshot_path(frozen).read_text()
    assert ("on canary pairs (held out to score reward models)", 1) in snapshots.snapshot_left_out(project)
    assert canary.pk in {r["comparison_id"] for r in export_rows(project=project, fmt="raw")}


def test_the_frozen_answer_does_not_change_after_later_votes_or_an_undo(project, voters):
    project.votes_per_comparison = 3
    project.save(update_fields=["votes_per_comparison"])
    made = make_comparisons(project, 1)[0]
    canary_hold(project=project, count=1)
    first = vote_record(annotator=voters[0], comparison_id=made.pk, choice="b")
    vote_record(annotator=voters[1], comparison_id=made.pk, choice="b")
    assert canary_freeze(project) == 0  # two of three votes: not complete
    vote_record(annotator=voters[2], comparison_id=made.pk, choice="a")
    assert canary_freeze(project) == 1
    made.refresh_from_db()
    assert made.canary_answer == "b"
    # People change their minds afterwards: the frozen label stays.
    vote_withdraw(annotator=voters[0], vote_id=first.vote.pk)
    vote_record(annotator=voters[0], comparison_id=made.pk, choice="a")
    assert canary_freeze(project) == 0
    made.refresh_from_db()
    assert made.canary_answer == "b"
    assert canary_pairs(project) == [{"prompt": made.prompt.messages, "a": made.completion_a.text,
                                      "b": made.completion_b.text, "answer": "b"}]


def test_majority_rules():
    assert majority(["a", "a", "b"]) == "a"
    assert majority(["a", "b"]) == "tie"
    assert majority(["b", "tie", "both_bad"]) == "tie"
    assert majority(["b"]) == "b"
