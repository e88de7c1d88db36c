"""Rounds that compound: the loop promotes by the button's rule, and the next policy update starts from the
promoted checkpoint and learns from the votes since its parent's snapshot."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotate import services
from annotate.models import Checkpoint, Comparison, Event, Snapshot, Vote
from annotate.votes import vote_record
from tests.tiny import save_tiny_bert, save_tiny_llama
from tests.training.test_console_leaderboard import battles
from tests.training.test_reward_runs import vote_by_rule
from training import checkpoints, guards
from training.checkpoints import PEOPLE_AND_SIMULATED
from training.loop import MIN_NEW_VOTES, loop_settings, policy_snapshot, promote_if_due, run_rounds
from training.models import Promotion, TrainingRun
from training.runs import run_create

INCUMBENT, CANDIDATE, RETIRED = Checkpoint.State.INCUMBENT, Checkpoint.State.CANDIDATE, Checkpoint.State.RETIRED


@pytest.fixture
def pair(project):
    base = services.checkpoint_get_or_create(project=project, name="base", state=INCUMBENT)
    cand = services.checkpoint_get_or_create(project=project, name="cand", parent=base)
    return base, cand


def auto(project, *, min_votes=20):
    settings = loop_settings(project)
    settings.auto_promote = True
    settings.promote_min_votes = min_votes
    settings.save()
    return settings


def test_automatic_promotion_is_off_unless_the_project_asks(project, pair):
    base, cand = pair
    battles(project, cand, base, ["a"] * 40)
    assert promote_if_due(project).promoted is None
    cand.refresh_from_db()
    assert cand.state == CANDIDATE and not Promotion.objects.exists()


def test_the_loop_promotes_a_candidate_that_clears_the_incumbent_and_says_so(project, pair,
                                                                            django_capture_on_commit_callbacks):
    base, cand = pair
    auto(project)
    battles(project, cand, base, ["a"] * 40 + ["b"] * 5 + ["tie"] * 3)
    with django_capture_on_commit_callbacks(execute=True):
        result = promote_if_due(project)
    assert result.promoted == cand and "clears the incumbent's" in result.why
    cand.refresh_from_db(), base.refresh_from_db()
    assert cand.state == INCUMBENT and base.state == RETIRED
    promotion = Promotion.objects.get()
    assert promotion.user is None and promotion.override_reason == "" and promotion.lower > promotion.previous_upper
    event = Event.objects.get(type="checkpoint.promoted")
    assert event.data["automatic"] is True and event.data["overridden"] is False
    assert promote_if_due(project).promoted is None  # nothing left to promote


def test_too_few_battle_votes_or_an_overlapping_interval_promote_nothing(project, pair):
    base, cand = pair
    auto(project, min_votes=50)
    battles(project, cand, base, ["a"] * 40)
    result = promote_if_due(project)
    assert result.promoted is None and "cand has 40 of 50 battle votes" in result.why
    close = services.checkpoint_get_or_create(project=project, name="close", parent=base)
    auto(project, min_votes=10)
    battles(project, close, base, ["a"] * 11 + ["b"] * 9, tag="close ")
    Checkpoint.objects.filter(pk=cand.pk).update(state=RETIRED)
    result = promote_if_due(project)
    assert result.promoted is None and "does not clear the incumbent" in result.why
    assert Checkpoint.objects.get(pk=base.pk).state == INCUMBENT


def test_the_gate_refuses_a_checkpoint_the_reward_hacking_guard_flags(project, pair, monkeypatch):
    base, cand = pair
    auto(project)
    battles(project, cand, base, ["a"] * 40)
    monkeypatch.setattr(guards, "checkpoint_flag", lambda c: "proxy reward rose while people preferred it less")
    result = promote_if_due(project)
    assert result.promoted is None and "cand is flagged: proxy reward rose" in result.why
    cand.refresh_from_db()
    assert cand.state == CANDIDATE and cand.meta["auto_promotion"]["refused"].startswith("proxy reward rose")
    # A manager can still promote it with the button's rule; the guard binds only the loop.
    assert checkpoints.checkpoint_promote(checkpoint=cand, by=None).checkpoint == cand


def test_simulated_battle_votes_count_only_for_a_simulated_loop(project, pair):
    base, cand = pair
    auto(project)
    battles(project, cand, base, ["a"] * 40, source=Vote.Source.SIMULATED)
    assert promote_if_due(project).promoted is None  # people's leaderboard: no votes
    assert promote_if_due(project, sources=PEOPLE_AND_SIMULATED).promoted == cand


def _trained(project, checkpoint, snapshot):
    """``checkpoint`` as the output of a DPO run on ``snapshot``."""
    run = run_create(project=project, kind=TrainingRun.Kind.DPO, enqueue=False, snapshot=snapshot)
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint_out=checkpoint, state=TrainingRun.State.SUCCEEDED)


def test_the_next_update_learns_from_the_votes_since_the_incumbents_snapshot(project, annotator, pair, settings,
                                                                             tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    base, cand = pair
    vote_by_rule(project, annotator, 30)
    Vote.objects.update(created_at=timezone.now() - timedelta(hours=1))
    old = Snapshot.objects.create(project=project, uri="file:///old", count=30, votes=30, sha256="0" * 64)
    Snapshot.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=30))
    old.refresh_from_db()
    whole = Snapshot.objects.create(project=project, uri="file:///whole", count=50, votes=50, sha256="1" * 64)
    loop = loop_settings(project)

    # The incumbent was not trained here (the base): the whole snapshot.
    assert policy_snapshot(project, loop, whole)[0] == whole
    _trained(project, cand, old)
    Checkpoint.objects.filter(pk=base.pk).update(state=RETIRED)
    Checkpoint.objects.filter(pk=cand.pk).update(state=INCUMBENT)
    # Too few new votes: the whole snapshot, and the reason says so.
    snapshot, why = policy_snapshot(project, loop, whole)
    assert snapshot == whole and "only 0 votes since cand's snapshot" in why

    vote_by_rule(project, annotator, MIN_NEW_VOTES + 4, start=30)
    snapshot, why = policy_snapshot(project, loop, whole)
    assert snapshot not in (whole, old) and snapshot.votes == MIN_NEW_VOTES + 4 and snapshot.count == MIN_NEW_VOTES + 4
    assert f"{MIN_NEW_VOTES + 4} votes since cand's snapshot {old.pk}" == why
    assert snapshot.filters["after"] == old.created_at.isoformat() and "which cand was trained on" in snapshot.filters["note"]

    loop.train_on = "all"
    assert policy_snapshot(project, loop, whole) == (whole, "the whole snapshot (train on: all votes)")


@pytest.mark.django_db(transaction=False)
def test_two_rounds_compound_the_second_starts_from_the_promoted_winner(project, annotator, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.REWARD_BACKBONE = str(save_tiny_bert(tmp_path / "tiny-bert"))
    base = Checkpoint.objects.create(project=project, name="base", uri=str(save_tiny_llama(tmp_path / "policy", chat=True)),
                                     state=INCUMBENT)
    loop = loop_settings(project)
    loop.battle_prompts = 12
    loop.promote_min_votes = 10
    loop.policy_config = {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3}
    loop.sampling = {"max_new_tokens": 6, "temperature": 1.0}
    loop.save()
    vote_by_rule(project, annotator, 24)

    first = run_rounds(project=project, rounds=1)[0]
    round1 = Checkpoint.objects.get(name=first.checkpoint)
    assert first.parent == "base" and "the whole snapshot (base was not trained here)" in first.trained_on
    assert first.promotion == "No candidate has battle votes yet."

    # People prefer the new candidate in every battle (the tiny model's battles, and more like them), and keep
    # voting on other pairs.
    sampled = Comparison.objects.filter(project=project, reason=Comparison.Reason.BATTLE)
    for comparison in sampled:
        side = "a" if comparison.completion_a.checkpoint_id == round1.pk else "b"
        vote_record(annotator=annotator, comparison_id=comparison.pk, choice=side)
    battles(project, round1, base, ["a"] * 12)
    vote_by_rule(project, annotator, MIN_NEW_VOTES, start=24)
    new_votes = len(sampled) + 12 + MIN_NEW_VOTES

    second = run_rounds(project=project, rounds=1)[0]
    round1.refresh_from_db(), base.refresh_from_db()
    assert round1.state == INCUMBENT and base.state == RETIRED
    assert Promotion.objects.get().user is None
    assert second.parent == round1.name
    run2 = TrainingRun.objects.get(checkpoint_out__name=second.checkpoint)
    run1 = TrainingRun.objects.get(checkpoint_out=round1)
    assert run2.checkpoint_in == round1 and Checkpoint.objects.get(name=second.checkpoint).parent == round1
    # Round 2 learned only from what round 1 had not seen: the battle votes and the new pairs.
    assert run2.snapshot.filters["after"] == run1.snapshot.created_at.isoformat()
    assert run2.snapshot.votes == new_votes < run1.snapshot.votes + new_votes
    assert f"trains on {new_votes} votes since {round1.name}'s snapshot {run1.snapshot.pk}" in run2.reason
    assert Checkpoint.objects.get(name=second.checkpoint).meta["snapshot_sha256"] == run2.snapshot.sha256


def test_the_leaderboard_says_which_votes_a_checkpoint_learned_from(client, project, manager, pair):
    base, cand = pair
    snapshot = Snapshot.objects.create(project=project, uri="file:///new", count=20, votes=20, sha256="2" * 64,
                                       filters={"after": "2026-12-06T03:00:00+00:00", "note": "votes since snapshot 1"})
    _trained(project, cand, snapshot)
    client.force_login(manager)
    page = client.get(f"/p/{project.slug}/console/leaderboard/")
    assert page.status_code == 200
    assert "votes since 2026-12-06T03:00:00: only what its parent had not learned" in page.content.decode()


def test_a_manager_turns_automatic_promotion_on_in_the_console(client, project, manager, annotator):
    url = f"/p/{project.slug}/console/loop/"
    client.force_login(annotator)
    assert client.get(url).status_code == 403
    client.force_login(manager)
    page = client.get(url)
    assert page.status_code == 200 and "The loop is off" in page.content.decode()
    answer = client.post(url, {"enabled": "on", "method": "dpo", "battle_prompts": 32, "auto_promote": "on",
                               "promote_min_votes": 40, "train_on": "all"})
    assert answer.status_code == 302
    settings = loop_settings(project)
    assert settings.enabled and settings.auto_promote and settings.promote_min_votes == 40
    assert settings.train_on == "all" and settings.battle_prompts == 32
    refused = client.post(url, {"method": "dpo", "battle_prompts": 0, "promote_min_votes": 40, "train_on": "later"})
    assert refused.status_code == 400
    assert "Between 1 and 10,000 prompts per battle." in refused.content.decode()
    settings.refresh_from_db()
    assert settings.enabled and settings.battle_prompts == 32  # nothing half-stored
