"""Annotator statistics and Krippendorff's alpha."""
from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from annotate import services
from annotate.models import Membership, Vote
from annotate.stats import annotator_report, krippendorff_alpha_nominal, median_ms, project_agreement
from annotate.votes import vote_record
from tests.conftest import PASSWORD, make_comparisons

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the worked example with
# missing values: 4 observers, 12 units, values 1-5; alpha for nominal data is 0.743.
KRIPPENDORFF_EXAMPLE = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _units(matrix):
    return [Counter(row[u] for row in matrix if row[u] is not None) for u in range(len(matrix[0]))]


def _alpha_by_pairs(units) -> float:
    """Alpha straight from its definition: 1 - observed / expected disagreement over pairable values."""
    observed_pairs = []
    values = []
    for unit in units:
        items = list(unit.elements())
        if len(items) < 2:
            continue
        values += items
        for i, j in itertools.permutations(range(len(items)), 2):
            observed_pairs.append((items[i] != items[j], 1 / (len(items) - 1)))
    n = len(values)
    d_o = sum(w for differs, w in observed_pairs if differs) / n
    d_e = sum(a != b for a, b in itertools.permutations(values, 2)) / (n * (n - 1))
    return 1 - d_o / d_e


def test_alpha_matches_krippendorffs_worked_example():
    assert round(krippendorff_alpha_nominal(_units(KRIPPENDORFF_EXAMPLE)), 3) == 0.743


def test_alpha_matches_its_definition_on_random_data():
    rng = random.Random(3)
    units = [Counter(rng.choice("abtx") for _ in range(rng.randint(1, 5))) for _ in range(40)]
    assert krippendorff_alpha_nominal(units) == pytest.approx(_alpha_by_pairs(units))


def test_alpha_edge_cases():
    assert krippendorff_alpha_nominal([Counter(a=1), Counter(b=1)]) is None  # nothing pairable
    assert krippendorff_alpha_nominal([Counter(a=3), Counter(a=2)]) == 1.0
    assert krippendorff_alpha_nominal([Counter(a=2), Counter(b=2)]) == 1.0
    assert krippendorff_alpha_nominal([Counter(a=1, b=1), Counter(a=1, b=1)]) < 0  # worse than chance


@pytest.fixture
def three(project):
    project.votes_per_comparison = 3
    project.save()
    return [
        services.user_with_role(project=project, username=name, password=PASSWORD, role=Membership.Role.ANNOTATOR)
        for name in ("ann", "bob", "cat")
    ]


def _vote(user, comparison, choice, ms):
    vote_record(annotator=user, comparison_id=comparison.pk, choice=choice, time_spent_ms=ms)


def test_annotator_report_counts_medians_agreement_bias_and_ties(project, three):
    ann, bob, cat = three
    c = make_comparisons(project, 5)
    # Shared comparisons 0-2: ann and bob agree with each other; cat disagrees with them twice.
    for comparison, (x, y, z) in zip(c[:3], [("a", "a", "b"), ("b", "b", "b"), ("a", "a", "tie")], strict=True):
        _vote(ann, comparison, x, 1000)
        _vote(bob, comparison, y, 3000)
        _vote(cat, comparison, z, 5000)
    _vote(ann, c[3], "a", 2000)  # single votes: no agreement to measure
    _vote(ann, c[4], "tie", 9000)
    _vote(bob, c[3], "both_bad", None)
    stats, agreement = annotator_report(project=project)
    by_name = {s.username: s for s in stats}
    assert [s.username for s in stats] == ["ann", "bob", "cat"]
    assert by_name["ann"].votes == 5 and by_name["ann"].today == 5
    assert by_name["ann"].median_seconds == 1.0  # 1, 1, 1, 2, 9 seconds
    assert by_name["bob"].median_seconds == 3.0  # the vote without a time is left out
    # Leave-one-out: on c[0] and c[2] ann's two others are split (a vs b, a vs tie), so they don't count;
    # on c[1] the others agree with ann; on c[3] bob alone (both bad) disagrees with ann's a.
    assert by_name["ann"].compared == 2 and by_name["ann"].agreement == 0.5
    assert by_name["bob"].compared == 2 and by_name["bob"].agreement == 0.5
    assert by_name["cat"].compared == 3 and by_name["cat"].agreement == pytest.approx(1 / 3)
    assert by_name["ann"].a_share == pytest.approx(3 / 4) and by_name["ann"].decisive == 4
    assert by_name["ann"].tie_rate == pytest.approx(1 / 5)
    assert by_name["bob"].both_bad_rate == pytest.approx(1 / 4)
    assert by_name["cat"].tie_rate == pytest.approx(1 / 3)
    units = [Counter("aab"), Counter("bbb"), Counter(["a", "a", "tie"]), Counter(["a", "both_bad"])]
    assert agreement.alpha == pytest.approx(krippendorff_alpha_nominal(units))
    assert agreement.units == 4 and agreement.votes == 11
    assert agreement.observed == pytest.approx((1 + 3 + 1 + 0) / (3 + 3 + 3 + 1))
    assert agreement.decisive == pytest.approx((1 + 3 + 1) / (3 + 3 + 1))
    assert project_agreement(project=project) == agreement


def test_sources_filter_leaves_out_simulated_votes(project, three):
    ann, bob, _ = three
    c = make_comparisons(project, 1)[0]
    _vote(ann, c, "a", 1000)
    vote_record(annotator=bob, comparison_id=c.pk, choice="b", source=Vote.Source.SIMULATED)
    stats, agreement = annotator_report(project=project, sources=[Vote.Source.HUMAN])
    assert [s.username for s in stats] == ["ann"] and stats[0].agreement is None
    assert agreement.units == 0 and agreement.alpha is None


def test_median_of_an_even_group_is_the_mean_of_the_middle_two(project, three):
    ann = three[0]
    for comparison, ms in zip(make_comparisons(project, 4), [400, 100, 300, 200], strict=True):
        _vote(ann, comparison, "a", ms)
    assert median_ms(Vote.objects.all()) == {None: 250.0}
    assert median_ms(Vote.objects.all(), by="annotator_id") == {ann.pk: 250.0}


def test_report_takes_the_same_few_queries_however_many_votes(project, three, django_assert_num_queries):
    comparisons = make_comparisons(project, 12)
    for i, comparison in enumerate(comparisons):
        for user in three[: 1 + i % 3]:
            _vote(user, comparison, "ab"[i % 2], 100 * i)
    with django_assert_num_queries(3):
        stats, _ = annotator_report(project=project)
    assert sum(s.votes for s in stats) == 24
