"""The reward-hacking flag: proxy reward up while people's preference goes down."""
from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Checkpoint, Vote
from tests.training.test_console_leaderboard import battles
from training.guards import checkpoint_flag, head_to_head, win_rates

INCUMBENT = Checkpoint.State.INCUMBENT


def guard(checkpoint, proxy, *, rivals=None, reward_model=7):
    checkpoint.meta = {**checkpoint.meta, "guard": {"proxy_reward": proxy, "reward_model": reward_model,
                                                     "prompts": [1, 2, 3], "rivals": rivals or {}}}
    checkpoint.save(update_fields=["meta"])


@pytest.fixture
def pair(project):
    base = services.checkpoint_get_or_create(project=project, name="base", state=INCUMBENT)
    cand = services.checkpoint_get_or_create(project=project, name="cand", parent=base)
    return base, cand


def test_the_flag_fires_when_proxy_reward_rises_and_people_prefer_the_parent(project, pair):
    base, cand = pair
    guard(base, 0.1)
    guard(cand, 0.9)
    battles(project, cand, base, ["b"] * 7 + ["a"] * 3)  # people: the parent, 7 of 10
    flag = checkpoint_flag(cand)
    assert flag is not None
    assert "cand" in flag and "base" in flag and "30%" in flag and "10" in flag


def test_simulated_battle_votes_count_like_human_ones(project, pair):
    base, cand = pair
    guard(cand, 0.9, rivals={str(base.pk): 0.1})  # the rival scored in the same job
    battles(project, cand, base, ["b"] * 9, source=Vote.Source.SIMULATED)
    assert checkpoint_flag(cand) is not None
    assert head_to_head(cand, base).votes == 9 and head_to_head(base, cand).rate == 1.0


def test_no_flag_when_people_agree_with_the_proxy(project, pair):
    base, cand = pair
    guard(base, 0.1)
    guard(cand, 0.9)
    battles(project, cand, base, ["a"] * 7 + ["b"] * 3)
    assert checkpoint_flag(cand) is None


def test_no_flag_when_the_proxy_did_not_rise(project, pair):
    base, cand = pair
    guard(base, 0.9)
    guard(cand, 0.1)
    battles(project, cand, base, ["b"] * 10)
    assert checkpoint_flag(cand) is None


def test_no_flag_on_too_few_votes_or_incomparable_scores(project, pair):
    base, cand = pair
    guard(base, 0.1, reward_model=6)  # another reward model: another scale
    guard(cand, 0.9)
    battles(project, cand, base, ["b"] * 10)
    assert checkpoint_flag(cand) is None
    guard(base, 0.1)
    assert checkpoint_flag(cand) is not None
    assert checkpoint_flag(cand, min_votes=11) is None
    fresh = services.checkpoint_get_or_create(project=project, name="fresh", parent=base)
    assert checkpoint_flag(fresh) is None  # no guard metrics yet


def test_without_head_to_head_votes_the_overall_win_rate_decides(project, pair):
    base, cand = pair
    other = services.checkpoint_get_or_create(project=project, name="other")
    guard(base, 0.1)
    guard(cand, 0.9)
    battles(project, base, other, ["a"] * 8 + ["b"] * 2, tag="b ")  # the parent won 80%
    battles(project, cand, other, ["a"] * 4 + ["b"] * 6, tag="c ")  # the candidate wins 40%
    rates = win_rates(project)
    assert rates[base.pk].rate == 0.8 and rates[cand.pk].rate == 0.4
    flag = checkpoint_flag(cand)
    assert flag is not None and "80%" in flag and "40%" in flag


def test_the_incumbent_is_the_reference_when_the_parent_was_not_scored(project):
    root = services.checkpoint_get_or_create(project=project, name="root")
    held = services.checkpoint_get_or_create(project=project, name="held", state=INCUMBENT)
    cand = services.checkpoint_get_or_create(project=project, name="cand", parent=root)
    guard(held, 0.2)
    guard(cand, 0.5)
    battles(project, held, cand, ["a"] * 8)
    flag = checkpoint_flag(cand)
    assert flag is not None and "held" in flag
