"""The annotator reliability model: who to trust, each comparison's posterior, and labels from it."""
from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pandas as pd
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from annotate import dawid_skene, reliability, snapshots
from annotate.exports import export_rows, write_export
from annotate.models import Comparison, ComparisonPosterior, Exclusion, ReliabilityFit, Vote
from annotate.services import InvalidInput
from annotate.votes import vote_record
from tests.conftest import make_comparisons

CAREFUL, SPAMMER, LEFT = "careful", "spammer", "left"


def _click(kind: str, truth: str, rng: random.Random) -> str:
    """What a person of ``kind`` clicks on a pair whose better side is ``truth``."""
    if kind == CAREFUL:
        return truth if rng.random() < 0.95 else {"a": "b", "b": "a"}[truth]
    if kind == SPAMMER:
        return rng.choice("ab")
    return "a"  # always the left answer


def crowd(project, django_user_model, people: dict[str, str], n: int = 60, seed: int = 0, per: int | None = None):
    """``n`` comparisons with a hidden better side, and a vote on each from ``per`` people drawn at
    random (default: everyone). Returns (comparisons, truth by comparison id, users by name)."""
    rng = random.Random(seed)
    project.votes_per_comparison = per or len(people)
    project.save(update_fields=["votes_per_comparison"])
    comparisons = make_comparisons(project, n)
    truth = {c.pk: rng.choice("ab") for c in comparisons}
    users = {name: django_user_model.objects.create_user(username=name) for name in people}
    votes = []
    for c in comparisons:
        for name in (rng.sample(sorted(people), per) if per else people):
            kind = people[name]
            click = _click(kind, truth[c.pk], rng)
            winner = c.completion_a_id if click == "a" else c.completion_b_id
            votes.append(Vote(comparison=c, annotator=users[name], choice=click, winner_id=winner,
                              source=Vote.Source.HUMAN))
    Vote.objects.bulk_create(votes)
    return comparisons, truth, users


def test_the_fit_is_crowd_kits_dawid_skene_on_a_small_case():
    """With smoothing off, our EM reaches the same posteriors as crowd-kit 1.4.2's DawidSkene, gold included."""
    from crowdkit.aggregation import DawidSkene

    rng = np.random.default_rng(0)
    truth = rng.integers(2, size=80)
    rows = []
    for item in range(80):
        for worker in rng.choice(9, size=3, replace=False):
            accuracy = (0.5, 0.7, 0.95)[worker % 3]
            rows.append((item, worker, truth[item] if rng.random() < accuracy else 1 - truth[item]))
    votes = np.array(rows)
    gold = {item: int(truth[item]) for item in range(8)}
    ours = dawid_skene.fit(votes[:, 0], votes[:, 1], votes[:, 2], n_items=80, n_workers=9, gold=gold, smoothing=0,
                           learn_prior=True,
                           tol=1e-12, max_iter=2000)
    frame = pd.DataFrame({"task": votes[:, 0], "worker": votes[:, 1], "label": np.array(["a", "b"])[votes[:, 2]]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # crowd-kit's pandas calls are deprecated under pandas 3
        theirs = DawidSkene(n_iter=2000, tol=1e-14).fit(
            frame, true_labels=pd.Series({item: "ab"[side] for item, side in gold.items()}))
    p_a = theirs.probas_["a"].reindex(range(80)).to_numpy()
    assert np.abs(p_a - ours.p_a).max() < 1e-6
    assert (ours.p_a[:8] == 1 - truth[:8]).all()  # gold clamped: P(a) is 1 where a is the answer


def test_a_spammer_comes_out_low_a_careful_person_high_and_a_left_clicker_biased(project, django_user_model):
    people = {"ann": CAREFUL, "bob": CAREFUL, "cat": SPAMMER, "dan": LEFT, "eve": CAREFUL}
    _, _, users = crowd(project, django_user_model, people, n=80)

    fit = reliability.reliability_fit(project=project)

    person = {name: fit.people[str(user.pk)] for name, user in users.items()}
    assert person["ann"]["competence"] > 0.85 and person["eve"]["competence"] > 0.85
    assert person["cat"]["competence"] < 0.7 and abs(person["cat"]["position_bias"]) < 0.2
    assert person["dan"]["competence"] < 0.7 and person["dan"]["position_bias"] > 0.4
    assert abs(person["ann"]["position_bias"]) < 0.1
    assert fit.votes == 80 * 5 and fit.comparisons == 80


def test_model_labels_beat_the_majority_where_the_unreliable_outnumber_the_careful(project, django_user_model):
    """Two careful people, two spammers and two left-clickers, three of them on each pair: the
    majority is often a left-clicker plus a coin; the model learns whom to follow."""
    people = {"ann": CAREFUL, "bob": CAREFUL, "cat": SPAMMER, "cy": SPAMMER, "dan": LEFT, "di": LEFT}
    comparisons, truth, _ = crowd(project, django_user_model, people, n=200, seed=1, per=3)
    reliability.reliability_fit(project=project)
    texts = {c.pk: (c.completion_a.text, c.completion_b.text) for c in comparisons}
    right_text = {texts[pk]["ab".index(side)] for pk, side in truth.items()}

    def accuracy(aggregation: str) -> float:
        rows = list(export_rows(project=project, fmt="trl", aggregation=aggregation))
        return sum(row["chosen"] in right_text for row in rows) / len(truth)

    majority, model = accuracy("majority"), accuracy("model")
    assert model >= 0.8 and model >= majority + 0.1, (majority, model)


def test_confidence_travels_with_each_row_and_gold_is_a_known_answer(project, django_user_model, tmp_path):
    people = {"ann": CAREFUL, "bob": CAREFUL, "cat": SPAMMER}
    comparisons, truth, users = crowd(project, django_user_model, people, n=30)
    gold = comparisons[0]
    answer = truth[gold.pk]
    Comparison.objects.filter(pk=gold.pk).update(state=Comparison.State.GOLD, gold_answer=answer)
    wrong = {"a": "b", "b": "a"}[answer]
    Vote.objects.filter(comparison=gold).update(choice=wrong, winner_id=getattr(gold, f"completion_{wrong}_id"))

    fit = reliability.reliability_fit(project=project)

    posterior = ComparisonPosterior.objects.get(fit=fit, comparison=gold)
    assert posterior.p_a == (1.0 if answer == "a" else 0.0) and posterior.confidence == 1.0
    assert fit.gold_comparisons == 1 and fit.people[str(users["ann"].pk)]["gold_votes"] == 1
    rows = list(export_rows(project=project, fmt="trl", aggregation="model", confidence=True))
    assert len(rows) == 29  # gold is never training data
    assert all(0.5 < row["confidence"] <= 1 for row in rows)
    path = tmp_path / "model.parquet"
    assert write_export(project=project, fmt="pairs", path=path, aggregation="model", confidence=True) == 29
    import pyarrow.parquet as pq

    assert pq.read_table(path).column("confidence").to_pylist() == [r["confidence"] for r in rows]


def test_bad_aggregation_requests_are_refused_with_a_reason(project, django_user_model):
    crowd(project, django_user_model, {"ann": CAREFUL}, n=3)
    with pytest.raises(InvalidInput, match="no reliability fit yet"):
        list(export_rows(project=project, fmt="trl", aggregation="model"))
    with pytest.raises(InvalidInput, match="aggregation must be one of"):
        list(export_rows(project=project, fmt="trl", aggregation="median"))
    with pytest.raises(InvalidInput, match="aggregation=model"):
        list(export_rows(project=project, fmt="trl", confidence=True))
    reliability.reliability_fit(project=project)
    with pytest.raises(InvalidInput, match="raw keeps every vote"):
        list(export_rows(project=project, fmt="raw", aggregation="model"))
    with pytest.raises(InvalidInput, match="aggregation must be one of"):
        snapshots.snapshot_freeze(project=project, aggregation="mode")


def test_a_model_snapshot_fits_when_the_fit_is_stale_and_records_the_fit(
        project, annotator, django_user_model, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    comparisons, _, _ = crowd(project, django_user_model, {"ann": CAREFUL, "cat": SPAMMER}, n=12)
    project.aggregation = "model"
    project.save(update_fields=["aggregation"])

    first = snapshots.snapshot_freeze(project=project)
    again = snapshots.snapshot_freeze(project=project)  # no new vote: the same fit
    project.votes_per_comparison = 3
    project.save(update_fields=["votes_per_comparison"])
    vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a")
    later = snapshots.snapshot_freeze(project=project)
    majority = snapshots.snapshot_freeze(project=project, aggregation="majority")

    assert first.aggregation == "model" and first.reliability_fit is not None
    assert again.reliability_fit_id == first.reliability_fit_id
    assert later.reliability_fit_id != first.reliability_fit_id and later.reliability_fit.votes == 25
    assert majority.aggregation == "majority" and majority.reliability_fit is None
    rows = [json.loads(line) for line in open(snapshots.snapshot_path(later))]
    assert rows and all("confidence" in row for row in rows)
    assert all("confidence" not in json.loads(line) for line in open(snapshots.snapshot_path(majority)))


def test_excluded_people_and_other_sources_stay_out_of_the_fit(project, django_user_model, manager):
    _, _, users = crowd(project, django_user_model, {"ann": CAREFUL, "cat": SPAMMER, "ai": CAREFUL}, n=10)
    Vote.objects.filter(annotator=users["ai"]).update(source=Vote.Source.AI)
    Exclusion.objects.create(project=project, user=users["cat"], reason="gold accuracy 40%")

    fit = reliability.reliability_fit(project=project)

    assert set(fit.people) == {str(users["ann"].pk)} and fit.votes == 10


def test_old_fits_keep_their_summary_and_lose_their_posteriors(project, django_user_model):
    crowd(project, django_user_model, {"ann": CAREFUL}, n=4)
    fits = [reliability.reliability_fit(project=project) for _ in range(reliability.KEEP_POSTERIORS + 2)]
    assert ReliabilityFit.objects.filter(project=project).count() == len(fits)
    kept = set(ComparisonPosterior.objects.values_list("fit_id", flat=True))
    assert kept == {fit.pk for fit in fits[-reliability.KEEP_POSTERIORS:]}



def test_enough_new_votes_queue_a_fit(project, annotator, monkeypatch, eager, django_capture_on_commit_callbacks):
    monkeypatch.setattr(reliability, "CHECK_ONE_IN", 1)  # ask after every vote, not about one in twenty
    project.reliability_every = 4
    project.save(update_fields=["reliability_every"])
    comparisons = make_comparisons(project, 6)
    with django_capture_on_commit_callbacks(execute=True):
        for c in comparisons[:3]:
            vote_record(annotator=annotator, comparison_id=c.pk, choice="a")
    assert not ReliabilityFit.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        vote_record(annotator=annotator, comparison_id=comparisons[3].pk, choice="b")
    fit = ReliabilityFit.objects.get()
    assert fit.votes == 4
    with django_capture_on_commit_callbacks(execute=True):
        vote_record(annotator=annotator, comparison_id=comparisons[4].pk, choice="a")
    assert ReliabilityFit.objects.count() == 1  # one new vote since the fit: not due
    assert reliability.reliability_due(project.pk) is None


def test_the_command_fits_and_names_people(project, django_user_model, capsys):
    with pytest.raises(CommandError, match="no votes to fit"):
        call_command("fit_reliability", "--project", "demo")
    crowd(project, django_user_model, {"ann": CAREFUL, "bob": CAREFUL, "cat": SPAMMER, "dan": LEFT}, n=40)
    call_command("fit_reliability", "--project", "demo")
    out = capsys.readouterr().out
    assert "160 votes on 40 comparisons" in out and "dan" in out
    call_command("fit_reliability", "--project", "demo", "--json")
    people = json.loads(capsys.readouterr().out)["people"]
    assert people["dan"]["position_bias"] > 0.4 and people["ann"]["competence"] > people["cat"]["competence"]


def test_the_export_page_downloads_model_labels_with_their_confidence(client, project, manager, django_user_model):
    crowd(project, django_user_model, {"ann": CAREFUL, "bob": CAREFUL, "cat": SPAMMER}, n=8)
    client.force_login(manager)
    url = reverse("manage-export-download", args=[project.slug])
    refused = client.get(url, {"format": "trl", "aggregation": "model"})
    assert refused.status_code == 400 and "no reliability fit yet" in refused.content.decode()
    reliability.reliability_fit(project=project)
    response = client.get(url, {"format": "trl", "aggregation": "model", "confidence": "1"})
    assert response.status_code == 200
    rows = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert len(rows) == 8 and all(0.5 < row["confidence"] <= 1 for row in rows)
    assert client.get(url, {"format": "trl", "confidence": "1"}).status_code == 400
