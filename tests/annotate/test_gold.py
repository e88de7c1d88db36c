"""Gold comparisons: made from the project's own answers or imported, served like any pair, never
trained on; and the rule that leaves a careless person's votes out of the training data."""
from __future__ import annotations

import random
from io import StringIO
from unittest import mock

import pytest
from django.core.management import CommandError, call_command

from annotate import gold, services, snapshots
from annotate.exports import export_rows
from annotate.models import Comparison, Exclusion, Membership, Prompt, Vote
from annotate.queue import comparison_next
from annotate.services import InvalidInput
from annotate.votes import vote_record
from tests.conftest import PASSWORD

LONG = ("The Eiffel Tower is 330 metres tall. It was finished in 1889 for the World's Fair. "
        "Gustave Eiffel's company built it. Millions of people visit it every year.")


@pytest.fixture
def answered(project):
    """Two checkpoints' answers to three prompts, long enough for every degradation."""
    first = services.checkpoint_get_or_create(project=project, name="ckpt-a")
    second = services.checkpoint_get_or_create(project=project, name="ckpt-b")
    for i in range(3):
        prompt, _ = services.prompt_get_or_create(project=project, messages=f"Tell me about landmark {i}.")
        services.completion_get_or_create(prompt=prompt, checkpoint=first, text=LONG.replace("330", str(300 + i)))
        services.completion_get_or_create(prompt=prompt, checkpoint=second,
                                          text=f"Landmark {i} is old. It is famous. People like it a lot.\n\nThe end.")
    return project


@pytest.mark.parametrize("method", gold.METHODS)
def test_each_degradation_changes_the_answer_in_its_own_way(method):
    rng = random.Random(3)
    made = gold.degrade(LONG, method, rng, other="A different answer to a different question.")
    assert made is not None
    text, how = made
    assert text != LONG and how["method"] == method
    if method == "truncated":
        assert LONG.startswith(text) and not text.endswith(".")
    elif method == "shuffled":
        assert sorted(gold.sentences(text)) == sorted(gold.sentences(LONG))
    elif method == "repeated":
        assert len(gold.sentences(text)) == len(gold.sentences(LONG)) + 1
    elif method == "number_changed":
        assert how["from"] in LONG and how["to"] in text and how["from"] != how["to"]
        assert len(text.split()) == len(LONG.split())
    # Multi-sentence methods leave a one-sentence answer alone.
    if method in ("shuffled", "number_changed"):
        assert gold.degrade("Just 1 sentence here", method, rng) is None


def test_generated_gold_records_how_it_was_made_and_which_side_is_right(answered):
    made = gold.gold_generate(project=answered, count=5, seed=1)
    assert len(made) == 5
    assert {c.gold_method["method"] for c in made} == set(gold.METHODS)
    for comparison in Comparison.objects.filter(pk__in=[c.pk for c in made]).select_related(
            "completion_a__checkpoint", "completion_b__checkpoint"):
        assert comparison.state == "gold" and comparison.reason == "gold"
        right = comparison.completion_a if comparison.gold_answer == "a" else comparison.completion_b
        wrong = comparison.completion_b if comparison.gold_answer == "a" else comparison.completion_a
        assert right.checkpoint.name != gold.GOLD_CHECKPOINT and wrong.checkpoint.name == gold.GOLD_CHECKPOINT
    answered.refresh_from_db()
    assert answered.gold_count == 5
    assert {c.gold_answer for c in made} == {"a", "b"} or len(made) < 4  # positions drawn, not fixed


def test_gold_is_served_at_the_rate_to_everyone_and_never_fills(answered, annotator):
    services.comparisons_build(project=answered)  # three ordinary pairs
    made = gold.gold_generate(project=answered, count=2, seed=0)
    other = services.user_with_role(project=answered, username="other", password=PASSWORD,
                                    role=Membership.Role.ANNOTATOR)
    answered.refresh_from_db()
    answered.gold_rate = 0.5
    with mock.patch("annotate.queue.random.random", return_value=0.2):  # the draw says gold
        for person in (annotator, other):
            shown = comparison_next(project=answered, annotator=person)
            assert shown.state == "gold" and shown.text_a and shown.text_b
            vote_record(annotator=person, comparison_id=shown.pk, choice=shown.gold_answer)
    assert Vote.objects.filter(comparison__state="gold").count() == 2  # overlap 1, yet both answered
    with mock.patch("annotate.queue.random.random", return_value=0.9):  # the draw says an ordinary pair
        assert comparison_next(project=answered, annotator=annotator).state == "open"
    assert {c.pk for c in made} >= set(Vote.objects.filter(comparison__state="gold").values_list("comparison_id",
                                                                                                  flat=True))


def test_gold_and_excluded_people_never_reach_training_data(answered, annotator, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    services.comparisons_build(project=answered)
    made = gold.gold_generate(project=answered, count=1, seed=0)[0]
    ordinary = list(Comparison.objects.filter(project=answered, state="open").order_by("pk"))
    vote_record(annotator=annotator, comparison_id=made.pk, choice=made.gold_answer)
    vote_record(annotator=annotator, comparison_id=ordinary[0].pk, choice="a")
    careless = services.user_with_role(project=answered, username="careless", password=PASSWORD,
                                       role=Membership.Role.ANNOTATOR)
    vote_record(annotator=careless, comparison_id=ordinary[1].pk, choice="b")
    gold.exclusion_add(project=answered, user_id=careless.pk, by=None, reason="clicks without reading")
    for fmt in ("trl", "pairs", "kto"):
        rows = list(export_rows(project=answered, fmt=fmt))
        assert all(made.completion_a.text not in str(row) or made.completion_b.text not in str(row) for row in rows)
    assert len(list(export_rows(project=answered, fmt="trl"))) == 1  # the annotator's ordinary vote only
    assert snapshots.snapshot_freeze(project=answered).count == 1
    # The audit export keeps everything.
    assert {r["comparison_id"] for r in export_rows(project=answered, fmt="raw")} == {made.pk, ordinary[0].pk,
                                                                                      ordinary[1].pk}


@pytest.mark.django_db(transaction=True)  # the rule runs when each vote commits
def test_the_gold_rule_excludes_after_the_minimum_and_a_manager_reinstates(answered, annotator, manager):
    answered.gold_min_votes, answered.gold_threshold = 4, 0.75
    answered.save()
    made = gold.gold_generate(project=answered, count=8, seed=2)
    wrong = {"a": "b", "b": "a"}
    # 3 gold votes, 2 wrong: below the minimum, nothing happens yet.
    for comparison, right in zip(made[:3], (True, False, False), strict=True):
        vote_record(annotator=annotator, comparison_id=comparison.pk,
                    choice=comparison.gold_answer if right else wrong[comparison.gold_answer])
    assert not Exclusion.objects.exists()
    vote_record(annotator=annotator, comparison_id=made[3].pk, choice=wrong[made[3].gold_answer])
    exclusion = Exclusion.objects.get()
    assert (exclusion.user, exclusion.gold_votes, exclusion.gold_correct, exclusion.created_by) == (annotator, 4, 1,
                                                                                                   None)
    assert "gold accuracy 25% (1 of 4 gold pairs) is below the project's threshold of 75%" in exclusion.reason
    assert gold.excluded_ids(answered) == {annotator.pk}

    gold.exclusion_lift(project=answered, user_id=annotator.pk, by=manager, reason="retrained on the guidelines")
    assert gold.excluded_ids(answered) == set()
    # Counted again from the reinstatement: the old misses do not count twice.
    for comparison in made[4:7]:
        vote_record(annotator=annotator, comparison_id=comparison.pk, choice=comparison.gold_answer)
    assert gold.excluded_ids(answered) == set()
    assert Exclusion.objects.count() == 1 and Exclusion.objects.get().lifted_by == manager


def test_accuracy_comes_with_a_wilson_interval():
    score = gold.GoldAccuracy(votes=20, correct=16)
    low, high = score.interval
    assert score.accuracy == 0.8 and low == pytest.approx(0.584, abs=0.002) and high == pytest.approx(0.919, abs=0.002)
    assert gold.GoldAccuracy(votes=0, correct=0).interval is None


def test_imported_gold_is_all_or_nothing_and_says_which_row_is_bad(project):
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": [{"role": "user", "content": "Capital of France?"}], "chosen": "Paris", "rejected": "Rome"}]
    made = gold.gold_import(project=project, rows=rows)
    assert [c.gold_method for c in made] == [{"method": "imported"}] * 2
    for bad, message in [({"prompt": "x", "chosen": "same", "rejected": "same"}, "line 3, field \"rejected\": chosen and rejected are the same"),
                         ({"prompt": "x", "chosen": "ok"}, "line 3: needs prompt, chosen and rejected \\(rejected missing"),
                         ({"prompt": "x", "chosen": "a\x00", "rejected": "b"}, "line 3, field \"chosen\": holds a NUL")]:
        with pytest.raises(InvalidInput, match=message):
            gold.gold_import(project=project, rows=[*rows, bad])
    assert Comparison.objects.filter(state="gold").count() == 2


GOOD_LINE = '{"prompt": "2+2?", "chosen": "4", "rejected": "5"}'


@pytest.mark.parametrize(("bad", "message"), [
    ('{"prompt": "q\\u0000", "chosen": "a", "rejected": "b"}', 'line 4, field "prompt": holds a NUL character'),
    ('{"prompt": "q", "chosen": "a\\ud800", "rejected": "b"}', 'line 4, field "chosen": holds a lone surrogate'),
    ('{"prompt": [{"role": "user", "content": "\\udfff"}], "chosen": "a", "rejected": "b"}',
     'line 4, field "prompt[0].content": holds a lone surrogate'),
    ('{"prompt": "q", "chosen": "a", "rejected": "LONG"}', 'line 4, field "rejected": is 41 characters; one text '
                                                            'may hold at most 40 (TEXT_MAX_CHARS)'),
    ('{"prompt": "LONG", "chosen": "a", "rejected": "b"}', 'line 4, field "prompt": is 41 characters'),
    ('{"prompt": "q", "chosen": "a", "rejected": ' + "[" * 50_000 + "]" * 50_000 + "}", "line 4: invalid JSON"),
    ('{"prompt": "q", "chosen": "a", "rejected": 5}', 'line 4, field "rejected": must be a string'),
    ("[1, 2]", "line 4: must be a JSON object"),
])
def test_the_gold_command_refuses_a_bad_line_naming_it_and_stores_nothing(project, tmp_path, settings, bad, message):
    settings.TEXT_MAX_CHARS = 40
    path = tmp_path / "gold.jsonl"
    # Line 2 is blank: the line numbers are the file's own.
    path.write_text("\n".join([GOOD_LINE, "", GOOD_LINE.replace("2+2", "3+3"), bad.replace("LONG", "x" * 41)]) + "\n",
                    encoding="utf-8")
    with pytest.raises(CommandError) as refused:
        call_command("gold", project=project.slug, path=str(path))
    assert str(refused.value).startswith(f"{path}, ") and message in str(refused.value), str(refused.value)
    assert not Comparison.objects.filter(state="gold").exists()
    assert not Prompt.objects.filter(source="gold").exists()


def test_the_gold_command_imports_a_good_file(project, tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text(GOOD_LINE + "\n\n" + GOOD_LINE.replace("2+2", "3+3") + "\n", encoding="utf-8")
    out = StringIO()
    call_command("gold", project=project.slug, path=str(path), stdout=out)
    assert "2 gold pairs imported" in out.getvalue()
    assert Comparison.objects.filter(state="gold").count() == 2


def test_training_snapshots_leave_ai_votes_out_unless_the_project_opts_in(project, annotator, comparisons, settings,
                                                                          tmp_path):
    from training.simulate import simulated_annotator

    settings.ARTIFACTS_DIR = tmp_path
    judge = simulated_annotator(project=project, oracle_name="judge:x")
    project.votes_per_comparison = 2
    project.save()
    vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a")
    vote_record(annotator=judge, comparison_id=comparisons[1].pk, choice="a", source=Vote.Source.AI)
    assert snapshots.snapshot_freeze(project=project).votes == 1
    project.training_sources = ["human", "ai"]
    project.save()
    assert snapshots.snapshot_freeze(project=project).votes == 2


def test_the_gold_command_generates_imports_and_reports(answered, annotator, tmp_path):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("gold", "--project", "demo", "--generate", "3", stdout=out)
    assert "3 gold pairs made" in out.getvalue() and "demo: 3 gold pairs, served at 5%" in out.getvalue()
    path = tmp_path / "gold.jsonl"
    path.write_text('{"prompt": "2+2?", "chosen": "4", "rejected": "5"}\n\n{"prompt": "x", "chosen": "y", "rejected": "z"}\n')
    call_command("gold", "--project", "demo", "--import", str(path), stdout=out)
    assert "2 gold pairs imported" in out.getvalue()
    shown = Comparison.objects.filter(state="gold").first()
    vote_record(annotator=annotator, comparison_id=shown.pk, choice=shown.gold_answer)
    call_command("gold", "--project", "demo", stdout=(report := StringIO()))
    assert "annotator: 100% of 1 (95% 21%–100%)" in report.getvalue()
    path.write_text("not json\n")
    with pytest.raises(CommandError, match="line 1: invalid JSON"):
        call_command("gold", "--project", "demo", "--import", str(path))
    with pytest.raises(CommandError, match="gold methods must be drawn from"):
        call_command("gold", "--project", "demo", "--generate", "2", "--methods", "vibes")


def test_managers_set_the_gold_rule_and_the_training_sources_on_the_settings_page(client, project, manager):
    from django.urls import reverse

    client.force_login(manager)
    url = reverse("manage-settings", args=[project.slug])
    form = {"name": "Demo", "guidelines": "", "votes_per_comparison": 1, "retrain_threshold": 200,
            "lease_seconds": 600, "training_sources": ["human", "ai"], "gold_rate": 0.1, "gold_threshold": 0.8,
            "gold_min_votes": 20, "aggregation": "model", "reliability_every": 50}
    assert client.post(url, form).status_code == 302
    project.refresh_from_db()
    assert (project.training_sources, project.gold_rate, project.gold_threshold, project.gold_min_votes,
            project.aggregation, project.reliability_every) == (["human", "ai"], 0.1, 0.8, 20, "model", 50)
    for field, value, message in [("gold_rate", 0.9, "Between 0 (no gold) and 0.5."),
                                  ("training_sources", ["robots"], "Select a valid choice"),
                                  ("gold_min_votes", 0, "Between 1 and 1,000 gold votes.")]:
        response = client.post(url, {**form, field: value})
        assert response.status_code == 200 and message in response.content.decode()


def test_a_reload_shows_the_held_gold_pair_again(answered, annotator):
    services.comparisons_build(project=answered)
    gold.gold_generate(project=answered, count=2, seed=0)
    answered.refresh_from_db()
    answered.gold_rate = 0.5
    with mock.patch("annotate.queue.random.random", return_value=0.2):
        shown = comparison_next(project=answered, annotator=annotator)
    assert shown.state == "gold"
    for draw in (0.2, 0.9):  # whatever the next draw says, a reload shows the same pair
        with mock.patch("annotate.queue.random.random", return_value=draw):
            assert comparison_next(project=answered, annotator=annotator).pk == shown.pk


def test_a_flagged_gold_pair_returned_stays_gold_and_removed_leaves_the_draw(answered, annotator, manager):
    """Returning a flag never turns gold into training data; removing gold takes it out of the queue's draw."""
    from annotate.review import comparison_flag, flag_resolve

    kept, dropped = gold.gold_generate(project=answered, count=2, seed=0)
    for comparison, resolution in ((kept, "returned"), (dropped, "removed")):
        comparison_flag(comparison=comparison, annotator=annotator, reason="other", note="is this right?")
        flag_resolve(project=answered, comparison_id=comparison.pk, manager=manager, resolution=resolution)
    kept.refresh_from_db()
    dropped.refresh_from_db()
    answered.refresh_from_db()
    assert kept.state == Comparison.State.GOLD and dropped.state == Comparison.State.REMOVED
    assert answered.gold_count == 1
    other = services.user_with_role(project=answered, username="other", password=PASSWORD,
                                    role=Membership.Role.ANNOTATOR)
    vote_record(annotator=other, comparison_id=kept.pk, choice=kept.gold_answer)
    assert list(export_rows(project=answered, fmt="trl")) == []  # a gold vote is never a training row
    assert {r["comparison_id"] for r in export_rows(project=answered, fmt="raw")} == {kept.pk}
