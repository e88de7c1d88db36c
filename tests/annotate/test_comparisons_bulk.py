"""Writing comparisons in bulk: ``comparisons_create`` (battles, imports) and ``comparisons_build``."""
from __future__ import annotations

import random

import pytest

from annotate import services
from annotate.models import Comparison, Completion
from annotate.services import InvalidInput


def _answers(project, checkpoint_names, prompts: int) -> dict[str, list[Completion]]:
    """For each checkpoint, one completion per prompt (prompt i at index i)."""
    questions = [services.prompt_get_or_create(project=project, messages=f"Question {i}?")[0] for i in range(prompts)]
    out = {}
    for name in checkpoint_names:
        checkpoint = services.checkpoint_get_or_create(project=project, name=name)
        out[name] = [
            services.completion_get_or_create(prompt=q, checkpoint=checkpoint, text=f"{name} on {i}")[0]
            for i, q in enumerate(questions)
        ]
    return out


def _shown(comparison: Comparison) -> tuple[str, str]:
    return comparison.completion_a.text, comparison.completion_b.text


def test_battle_pairs_are_written_in_a_few_queries(project, django_assert_max_num_queries):
    answers = _answers(project, ["new", "old", "older"], prompts=30)
    pairs = [pair for other in ("old", "older") for pair in zip(answers["new"], answers[other], strict=True)]
    # SAVEPOINT, prompts' projects, stored pairs, one INSERT, RELEASE: not one query per pair.
    with django_assert_max_num_queries(5):
        created = services.comparisons_create(pairs=pairs, reason=Comparison.Reason.BATTLE, priority=10,
                                              rng=random.Random(7))
    assert created == 60
    stored = Comparison.objects.filter(project=project)
    assert stored.count() == 60
    assert set(stored.values_list("reason", "priority", "state")) == {("battle", 10, "open")}


def test_positions_are_drawn_as_comparison_create_draws_them(project):
    answers = _answers(project, ["new", "old"], prompts=20)
    pairs = list(zip(answers["new"], answers["old"], strict=True))
    services.comparisons_create(pairs=pairs, rng=random.Random(3))
    expected = random.Random(3)
    for first, second in pairs:
        comparison = Comparison.objects.get(prompt_id=first.prompt_id)
        a_first = expected.random() < 0.5
        assert (comparison.completion_a_id, comparison.completion_b_id) == (
            (first.pk, second.pk) if a_first else (second.pk, first.pk)
        )
    assert {c.completion_a_id for c in Comparison.objects.all()} & {c.pk for c in answers["old"]}
    assert {c.completion_a_id for c in Comparison.objects.all()} & {c.pk for c in answers["new"]}


def test_stored_and_repeated_pairs_are_skipped_without_a_draw(project):
    answers = _answers(project, ["new", "old"], prompts=3)
    (n0, n1, n2), (o0, o1, o2) = answers["new"], answers["old"]
    services.comparison_create(first=o0, second=n0)  # stored earlier, the other way round
    created = services.comparisons_create(pairs=[(n0, o0), (n1, o1), (o1, n1), (n2, o2)], rng=random.Random(5))
    assert created == 2
    assert Comparison.objects.count() == 3
    draws = random.Random(5)  # one draw for (n1, o1), one for (n2, o2); none for the skipped pairs
    for first, second in ((n1, o1), (n2, o2)):
        expected = (first.pk, second.pk) if draws.random() < 0.5 else (second.pk, first.pk)
        comparison = Comparison.objects.get(prompt_id=first.prompt_id)
        assert (comparison.completion_a_id, comparison.completion_b_id) == expected
    assert services.comparisons_create(pairs=[(n1, o1)]) == 0


@pytest.mark.parametrize("bad", ["other prompt", "same completion"])
def test_a_bad_pair_writes_nothing(project, bad):
    answers = _answers(project, ["new", "old"], prompts=2)
    good = (answers["new"][0], answers["old"][0])
    wrong = (answers["new"][0], answers["old"][1]) if bad == "other prompt" else (answers["old"][1],) * 2
    with pytest.raises(InvalidInput):
        services.comparisons_create(pairs=[good, wrong])
    assert not Comparison.objects.exists()


def test_the_comparison_belongs_to_its_prompts_project(project):
    other = services.project_create(slug="other", name="Other")
    answers = _answers(other, ["new", "old"], prompts=1)
    services.comparisons_create(pairs=[(answers["new"][0], answers["old"][0])])
    assert Comparison.objects.get().project_id == other.pk


def test_build_pairs_every_two_checkpoints_as_it_did_one_by_one(project):
    """comparisons_build writes what the pair-by-pair loop of comparison_create wrote, same positions."""
    twin = services.project_create(slug="twin", name="Twin")
    names = ["c1", "c2", "c3"]
    _answers(project, names, prompts=8)
    _answers(twin, names, prompts=8)
    assert services.comparisons_build(project=project, seed=11) == 8 * 3
    rng = random.Random(11)  # the loop comparisons_build ran before it wrote in bulk
    for prompt in twin.prompts.order_by("id"):
        firsts = list(Completion.objects.filter(prompt=prompt).order_by("id"))
        for i, first in enumerate(firsts):
            for second in firsts[i + 1 :]:
                services.comparison_create(first=first, second=second, rng=rng)

    def shown(p):
        return sorted((c.prompt.messages[0]["content"], *_shown(c)) for c in Comparison.objects.filter(project=p))

    assert shown(project) == shown(twin)
    assert services.comparisons_build(project=project, seed=11) == 0
