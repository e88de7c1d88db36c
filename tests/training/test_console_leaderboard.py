"""The checkpoint leaderboard from human battle votes, and promotion gated by the intervals."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotate import services
from annotate.models import Checkpoint, Comparison, Completion, Prompt, Snapshot, Vote, messages_hash, text_hash
from rewardmodel.models import RewardModel
from training.checkpoints import PromotionRefused, battle_counts, checkpoint_promote, leaderboard
from training.lib.ranking import rank
from training.models import Promotion, TrainingRun
from training.runs import run_create

INCUMBENT, CANDIDATE, RETIRED = Checkpoint.State.INCUMBENT, Checkpoint.State.CANDIDATE, Checkpoint.State.RETIRED


def battles(project, first, second, choices, *, source=Vote.Source.HUMAN, reason=Comparison.Reason.BATTLE, tag=""):
    """One comparison per choice, ``first`` shown as A; each gets one vote with that choice."""
    voter, _ = get_user_model().objects.get_or_create(username="battle-voter")
    made = []
    for i, choice in enumerate(choices):
        content = f"Battle {tag}{first.name}-{second.name}-{i}?"
        prompt = Prompt.objects.create(project=project, messages=[{"role": "user", "content": content}],
                                       content_hash=messages_hash([{"role": "user", "content": content}]))
        a, b = (Completion.objects.create(prompt=prompt, checkpoint=c, text=f"{c.name} {i}", text_hash=text_hash(f"{c.name} {i}"))
                for c in (first, second))
        comparison = Comparison.objects.create(project=project, prompt=prompt, completion_a=a, completion_b=b,
                                               reason=reason, vote_count=1)
        made.append(Vote(comparison=comparison, annotator=voter, choice=choice, source=source,
                         winner=a if choice == "a" else b if choice == "b" else None))
    Vote.objects.bulk_create(made)


@pytest.fixture
def trio(project):
    base = services.checkpoint_get_or_create(project=project, name="base", state=INCUMBENT)
    cand = services.checkpoint_get_or_create(project=project, name="cand", parent=base)
    close = services.checkpoint_get_or_create(project=project, name="close", parent=base)
    return base, cand, close


def test_battle_votes_count_by_checkpoint_whatever_side_they_were_shown_on(project, trio):
    base, cand, _ = trio
    battles(project, cand, base, ["a"] * 3 + ["b"] + ["tie", "both_bad"])
    battles(project, base, cand, ["b"] * 2, tag="swapped ")  # cand shown on the right, and winning
    battles(project, cand, base, ["b"] * 5, source=Vote.Source.SIMULATED, tag="sim ")  # not human: left out
    battles(project, cand, base, ["b"] * 5, reason=Comparison.Reason.RANDOM, tag="random ")  # not a battle
    counts = battle_counts(project)
    assert sum(n for *_, n in counts) == 8
    ranking = rank(counts, rounds=0)
    top = ranking.rating(cand.pk)
    assert top.games == 8 and top.wins == 3 + 2 + 1  # five wins, two ties as half each


def test_the_leaderboard_ranks_rated_checkpoints_with_lineage_and_lists_the_unrated(project, trio):
    base, cand, close = trio
    snapshot = Snapshot.objects.create(project=project, uri="file:///s", count=1, votes=1, sha256="0" * 64)
    rm = RewardModel.objects.create(project=project, version=4, backbone="b", snapshot=snapshot, artifact_uri="file:///r")
    run = run_create(project=project, kind=TrainingRun.Kind.PPO, enqueue=False, checkpoint_in=base, reward_model_in=rm,
                     snapshot=snapshot)
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint_out=cand)
    battles(project, cand, base, ["a"] * 30 + ["b"] * 5)
    board = leaderboard(project)
    assert [e.checkpoint.name for e in board.rated] == ["cand", "base"]
    assert [e.checkpoint.name for e in board.unrated] == ["close"]
    top = board.rated[0]
    assert top.rank == 1 and top.run.pk == run.pk and top.run.reward_model_in == rm and top.checkpoint.parent == base
    assert board.incumbent == base


def test_a_candidate_whose_interval_clears_the_incumbents_is_promoted(project, trio, manager):
    base, cand, _ = trio
    battles(project, cand, base, ["a"] * 40 + ["b"] * 5 + ["tie"] * 3)
    promotion = checkpoint_promote(checkpoint=cand, by=manager)
    cand.refresh_from_db()
    base.refresh_from_db()
    assert cand.state == INCUMBENT and base.state == RETIRED
    assert promotion.previous == base and promotion.user == manager and promotion.override_reason == ""
    assert promotion.lower > promotion.previous_upper and promotion.battle_votes == 48
    board = leaderboard(project)
    assert board.incumbent == cand and board.entry(cand.pk).rating.lower == pytest.approx(promotion.lower)


def test_an_overlapping_interval_needs_a_reason_which_is_recorded(project, trio, manager):
    base, _, close = trio
    battles(project, close, base, ["a"] * 11 + ["b"] * 9)
    with pytest.raises(PromotionRefused, match="does not clear the incumbent base's"):
        checkpoint_promote(checkpoint=close, by=manager)
    with pytest.raises(PromotionRefused, match="give a reason"):
        checkpoint_promote(checkpoint=close, by=manager, override_reason="   ")
    close.refresh_from_db()
    assert close.state == CANDIDATE and not Promotion.objects.exists()
    promotion = checkpoint_promote(checkpoint=close, by=manager, override_reason="  Safety fix; quality is on par. ")
    assert promotion.override_reason == "Safety fix; quality is on par."
    assert promotion.lower <= promotion.previous_upper


def test_unrated_candidates_and_the_incumbent_itself(project, trio, manager):
    base, cand, _ = trio
    with pytest.raises(PromotionRefused, match="no human battle votes yet"):
        checkpoint_promote(checkpoint=cand, by=manager)
    with pytest.raises(PromotionRefused, match="already the incumbent"):
        checkpoint_promote(checkpoint=base, by=manager, override_reason="again")
    assert checkpoint_promote(checkpoint=cand, by=manager, override_reason="hot fix").score is None


def test_the_first_incumbent_needs_no_interval(project, manager):
    first = services.checkpoint_get_or_create(project=project, name="first")
    promotion = checkpoint_promote(checkpoint=first, by=manager)
    assert promotion.previous is None and promotion.override_reason == ""


def test_the_page_promotes_refuses_and_overrides(client, project, trio, manager):
    base, cand, close = trio
    battles(project, cand, base, ["a"] * 40 + ["b"] * 5)
    battles(project, close, base, ["a"] * 6 + ["b"] * 5)
    client.force_login(manager)
    url = reverse("console-leaderboard", args=[project.slug])
    html = client.get(url).content.decode()
    assert 'data-promote="cand"' in html and 'data-override="close"' in html and 'data-promote="close"' not in html
    assert "Win rate of the row against the column" in html and "95% bootstrap intervals" in html
    refused = client.post(reverse("console-promote", args=[project.slug, close.pk]), follow=True).content.decode()
    assert "does not clear" in refused
    client.post(reverse("console-promote", args=[project.slug, cand.pk]))
    assert Checkpoint.objects.get(pk=cand.pk).state == INCUMBENT
    client.post(reverse("console-promote", args=[project.slug, close.pk]), {"override_reason": "<b>on call</b>"})
    assert Checkpoint.objects.get(pk=close.pk).state == INCUMBENT
    html = client.get(url).content.decode()
    assert "&lt;b&gt;on call&lt;/b&gt;" in html and html.count('data-promotion="') == 2


def test_hostile_checkpoint_names_are_escaped_in_tables_and_charts(client, project, manager):
    evil = services.checkpoint_get_or_create(project=project, name='<script>alert("x")</script>')
    plain = services.checkpoint_get_or_create(project=project, name="plain", state=INCUMBENT)
    battles(project, evil, plain, ["a", "b", "tie"])
    client.force_login(manager)
    html = client.get(reverse("console-leaderboard", args=[project.slug])).content.decode()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
