"""Active selection (annotate.active): the scores, the per-prompt choice and the queue it leaves behind."""
from __future__ import annotations

import math

import numpy as np
import pytest
from django.urls import reverse

from annotate import active, services
from annotate.active import (
    bald_scores,
    candidate_pairs_create,
    choose_served,
    pair_scores,
    priorities,
    selection_apply,
    uncertainty_scores,
)
from annotate.models import Comparison
from annotate.queue import comparison_next
from annotate.votes import vote_record
from tests.conftest import PASSWORD

# -- the math -------------------------------------------------------------------------------------


def test_bald_is_zero_when_the_heads_agree_however_unsure():
    for diff in (-3.0, 0.0, 0.4, 5.0):
        ra = np.full((1, 5), diff)
        assert bald_scores(ra, np.zeros((1, 5)))[0] == pytest.approx(0.0, abs=1e-9)


def test_bald_is_maximal_for_confident_heads_that_disagree():
    ra = np.array([[20.0, 20.0, -20.0, -20.0]])  # two heads sure of A, two sure of B
    split = bald_scores(ra, np.zeros_like(ra))[0]
    assert split == pytest.approx(1.0, abs=1e-6)
    mild = bald_scores(np.array([[1.0, 1.0, -1.0, -1.0]]), np.zeros((1, 4)))[0]
    assert 0.0 < mild < split


def test_bald_matches_the_mutual_information_in_nats_over_ln_2():
    ra, rb = np.array([[0.3, 2.0, -1.0]]), np.array([[0.0, 0.5, 0.2]])
    p = 1 / (1 + np.exp(-(ra - rb)))
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))  # noqa: E731
    expected = (h(p.mean()) - h(p).mean()) / math.log(2)
    assert bald_scores(ra, rb)[0] == pytest.approx(expected, rel=1e-9)


def test_uncertainty_is_highest_at_a_coin_flip():
    diffs = np.array([[-4.0], [-1.0], [0.0], [0.5], [3.0]])
    scores = uncertainty_scores(diffs, np.zeros_like(diffs))
    assert scores[2] == pytest.approx(1.0) and scores.argmax() == 2
    assert scores[3] > scores[1] > scores[0] and scores[3] > scores[4]
    assert scores.min() >= 0.0


def test_bald_with_one_head_ranks_as_uncertainty():
    ra = np.array([[0.1], [2.0], [-0.5]])
    assert pair_scores("bald", ra, np.zeros_like(ra)).tolist() == pytest.approx(
        pair_scores("uncertainty", ra, np.zeros_like(ra)).tolist())
    with pytest.raises(ValueError, match="selection must be one of"):
        pair_scores("random", ra, ra)


def test_priorities_keep_the_scores_order_below_unscored_pairs_and_battles():
    scores = np.array([0.2, 0.9, np.nan, 0.5, 0.0, 1.0])
    levels = priorities(scores)
    assert levels[2] == 0  # unscored: where fifo puts it
    scored = [levels[i] for i in np.argsort(-np.nan_to_num(scores, nan=-1))[:-1]]
    assert scored == sorted(scored, reverse=True) and len(set(scored)) == len(scored)
    assert max(scored) < 0 < 10


def test_each_prompt_serves_its_best_pairs_less_those_being_voted_on():
    prompts = [1, 1, 1, 2, 2, 2]
    scores = np.array([0.1, 0.9, 0.5, 0.3, np.nan, 0.8])
    assert choose_served(prompts, scores, per_prompt=0).all()
    assert choose_served(prompts, scores, per_prompt=1).tolist() == [False, True, False, False, False, True]
    assert choose_served(prompts, scores, per_prompt=2).tolist() == [False, True, True, True, False, True]
    assert choose_served(prompts, scores, per_prompt=1, taken={1: 1}).tolist() == [
        False, False, False, False, False, True]


# -- the database ---------------------------------------------------------------------------------


def _prompts_with_answers(project, n_prompts: int, k: int):
    checkpoint = services.checkpoint_get_or_create(project=project, name="sampler")
    for i in range(n_prompts):
        prompt, _ = services.prompt_get_or_create(project=project, messages=f"Prompt {i}?")
        for j in range(k):
            services.completion_get_or_create(prompt=prompt, checkpoint=checkpoint, text=f"answer {j} to {i}")


def _by_score(project, *, seed: int = 0) -> dict[int, float]:
    """A score for every comparison, as a reward model's refresh would give."""
    rng = np.random.default_rng(seed)
    return {pk: float(rng.random()) for pk in Comparison.objects.filter(project=project).values_list("pk", flat=True)}



def test_a_prompt_with_k_answers_gets_every_pair_and_only_its_share_is_served(project):
    project.selection, project.serve_per_prompt = "uncertainty", 2
    project.save()
    _prompts_with_answers(project, 3, 4)
    assert candidate_pairs_create(project=project, seed=1) == 3 * 6
    assert candidate_pairs_create(project=project, seed=1) == 0  # idempotent
    pairs = Comparison.objects.filter(project=project)
    assert set(pairs.values_list("reason", flat=True)) == {Comparison.Reason.ACTIVE}
    for prompt_id in set(pairs.values_list("prompt_id", flat=True)):
        states = sorted(pairs.filter(prompt_id=prompt_id).values_list("state", flat=True))
        assert states == ["open", "open", "pool", "pool", "pool", "pool"]


def test_the_refresh_serves_the_highest_scored_pair_first_and_battles_before_it(project, annotator):
    project.selection, project.serve_per_prompt = "bald", 1
    project.save()
    _prompts_with_answers(project, 2, 4)
    candidate_pairs_create(project=project)
    scores = _by_score(project)
    result = selection_apply(project=project, scores=scores)
    assert (result.considered, result.scored, result.pooled) == (12, 12, 10)
    served = Comparison.objects.filter(project=project, state="open")
    best_per_prompt = {}
    for pk, prompt_id in Comparison.objects.filter(project=project).values_list("pk", "prompt_id"):
        if scores[pk] > scores.get(best_per_prompt.get(prompt_id), -1):
            best_per_prompt[prompt_id] = pk
    assert set(served.values_list("pk", flat=True)) == set(best_per_prompt.values())
    first = max(best_per_prompt.values(), key=scores.get)
    assert comparison_next(project=project, annotator=annotator).pk == first

    # A checkpoint battle on a third prompt still comes first.
    _prompts_with_answers(project, 3, 2)
    prompt = services.prompt_get_or_create(project=project, messages="Prompt 2?")[0]
    x, y = prompt.completions.all()[:2]
    services.comparisons_create(pairs=[(x, y)], reason=Comparison.Reason.BATTLE, priority=10)
    other = services.user_with_role(project=project, username="other", password=PASSWORD, role="annotator")
    assert comparison_next(project=project, annotator=other).reason == Comparison.Reason.BATTLE


def test_a_leased_or_voted_pair_is_never_rewritten(project, annotator):
    project.votes_per_comparison = 2
    project.save()
    _prompts_with_answers(project, 1, 4)
    candidate_pairs_create(project=project)
    held = comparison_next(project=project, annotator=annotator)
    voter = services.user_with_role(project=project, username="voter", password=PASSWORD, role="annotator")
    voted = Comparison.objects.exclude(pk=held.pk).first()
    vote_record(annotator=voter, comparison_id=voted.pk, choice="a")
    project.selection, project.serve_per_prompt = "uncertainty", 1
    project.save()
    before = {c.pk: (c.priority, c.selection_score, c.state) for c in Comparison.objects.filter(pk__in=[held.pk, voted.pk])}
    selection_apply(project=project, scores=_by_score(project))
    after = {c.pk: (c.priority, c.selection_score, c.state) for c in Comparison.objects.filter(pk__in=[held.pk, voted.pk])}
    assert after == before == {held.pk: (0, None, "open"), voted.pk: (0, None, "open")}
    # Both are being voted on and the prompt serves one pair: they already fill it, so all others wait.
    assert Comparison.objects.filter(project=project, state="pool").count() == 4
    # A write planned before the lease was taken skips it too (the UPDATE checks again).
    assert active._write({held.pk: (-5, 0.5, "pool")}) == 0
    held.refresh_from_db()
    assert (held.priority, held.state) == (0, "open")


def test_fifo_puts_every_selected_pair_back_in_the_queue_at_priority_0(project):
    project.selection, project.serve_per_prompt = "bald", 1
    project.save()
    _prompts_with_answers(project, 2, 4)
    candidate_pairs_create(project=project)
    selection_apply(project=project, scores=_by_score(project))
    assert Comparison.objects.filter(project=project, state="pool").count() == 10
    project.selection = "fifo"
    project.save()
    result = selection_apply(project=project)
    assert result.changed == 12
    assert set(Comparison.objects.filter(project=project).values_list("priority", "selection_score", "state")) == {
        (0, None, "open")}


def test_the_queue_never_runs_dry_while_pool_pairs_remain(project, annotator, eager,
                                                          django_capture_on_commit_callbacks):
    project.selection, project.serve_per_prompt = "uncertainty", 1
    project.save()
    _prompts_with_answers(project, 2, 4)
    candidate_pairs_create(project=project)
    scores = _by_score(project, seed=3)
    selection_apply(project=project, scores=scores)
    served = []
    while (pair := comparison_next(project=project, annotator=annotator)) is not None:
        served.append(pair.pk)
        with django_capture_on_commit_callbacks(execute=True):  # the receivers run after the vote commits
            vote_record(annotator=annotator, comparison_id=pair.pk, choice="a")
    assert len(served) == 12 and not Comparison.objects.filter(project=project, state="pool").exists()
    # Within a prompt, the pairs came best first.
    for prompt_id in set(Comparison.objects.values_list("prompt_id", flat=True)):
        order = [pk for pk in served if Comparison.objects.get(pk=pk).prompt_id == prompt_id]
        assert order == sorted(order, key=scores.get, reverse=True)


def test_a_project_that_does_not_pool_costs_the_vote_path_one_statement_per_process_now_and_then(
        project, django_assert_num_queries, monkeypatch):
    with django_assert_num_queries(1):  # does it pool at all? No
        active.on_votes_recorded(None, project_id=project.pk)
    with django_assert_num_queries(0):  # remembered for POOL_CHECK_S
        active.on_votes_recorded(None, project_id=project.pk)
    monkeypatch.setattr(active, "POOL_CHECK_S", -1.0)
    with django_assert_num_queries(1):  # asked again once it is stale
        active.on_votes_recorded(None, project_id=project.pk)


def test_a_pooling_project_asks_after_every_vote_whether_its_queue_ran_dry(project, comparisons,
                                                                           django_assert_num_queries):
    Comparison.objects.filter(pk=comparisons[0].pk).update(state="pool")
    with django_assert_num_queries(2):  # it pools; an open pair is left
        active.on_votes_recorded(None, project_id=project.pk)
    with django_assert_num_queries(1):  # remembered that it pools: only "is any pair open?"
        active.on_votes_recorded(None, project_id=project.pk)


def test_managers_choose_the_policy_on_the_settings_page(client, project, manager, monkeypatch,
                                                         django_capture_on_commit_callbacks):
    queued = []
    monkeypatch.setattr("annotate.views_manage.selection_enqueue",
                        lambda project_id, *, rescore: queued.append((project_id, rescore)))
    client.login(username="manager", password=PASSWORD)
    url = reverse("manage-settings", args=[project.slug])
    page = client.get(url).content.decode()
    assert 'name="selection"' in page and 'name="serve_per_prompt"' in page
    form = {"name": "Demo", "guidelines": "", "votes_per_comparison": 1, "retrain_threshold": 200,
            "lease_seconds": 600, "training_sources": ["human"], "gold_rate": 0.0, "gold_threshold": 0.0,
            "gold_min_votes": 20, "aggregation": project.aggregation, "reliability_every": 200}
    response = client.post(url, {**form, "selection": "bald", "serve_per_prompt": 21})
    assert response.status_code == 200 and "Between 0 (serve every candidate pair) and 20" in response.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(url, {**form, "selection": "bald", "serve_per_prompt": 2}).status_code == 302
    project.refresh_from_db()
    assert (project.selection, project.serve_per_prompt) == ("bald", 2)
    assert queued == [(project.pk, True)]
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(url, form).status_code == 302  # an older form without them keeps them
    project.refresh_from_db()
    assert (project.selection, project.serve_per_prompt) == ("bald", 2) and len(queued) == 1
