"""The Bradley–Terry leaderboard fit, checked against a direct maximum-likelihood fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.lib.ranking import ELO_PER_NAT, rank, tally, win_probability

# Three checkpoints; (a, b, outcome, count) with 1 = a won, 0 = b won, 0.5 = tie.
KNOWN = [
    ("new", "base", 1.0, 62), ("new", "base", 0.0, 28), ("new", "base", 0.5, 10),
    ("base", "old", 1.0, 55), ("base", "old", 0.0, 35), ("base", "old", 0.5, 10),
    ("new", "old", 1.0, 70), ("new", "old", 0.0, 20), ("new", "old", 0.5, 10),
]


def direct_mle(battles) -> tuple[dict[str, float], dict[str, float]]:
    """Elo scores by maximising the log-likelihood of every battle with L-BFGS, and their Wald
    standard errors from the Hessian (the observed information) at the optimum."""
    names = sorted({n for a, b, *_ in battles for n in (a, b)})
    index = {n: i for i, n in enumerate(names)}
    rows = [(index[a], index[b], outcome) for a, b, outcome, count in battles for _ in range(count)]
    ia = torch.tensor([r[0] for r in rows])
    ib = torch.tensor([r[1] for r in rows])
    w = torch.tensor([r[2] for r in rows], dtype=torch.float64)

    def log_likelihood(theta):
        d = theta[ia] - theta[ib]
        return (w * torch.nn.functional.logsigmoid(d) + (1 - w) * torch.nn.functional.logsigmoid(-d)).sum()

    theta = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -log_likelihood(theta)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = theta.detach() - theta.detach().mean()
    information = -torch.autograd.functional.hessian(log_likelihood, fitted).numpy()
    covariance = np.linalg.pinv(information)  # θ is fixed only up to a constant: the centred covariance
    scores = {n: 1000 + ELO_PER_NAT * float(fitted[i]) for n, i in index.items()}
    errors = {n: ELO_PER_NAT * math.sqrt(covariance[i, i]) for n, i in index.items()}
    return scores, errors


def test_two_checkpoints_match_the_closed_form_with_ties_as_half_wins():
    ranking = rank([("x", "y", 1.0, 30), ("x", "y", 0.0, 10), ("x", "y", 0.5, 8)], prior=0, rounds=0)
    x, y = ranking.ratings
    assert x.name == "x" and x.wins == 34 and y.wins == 14 and x.games == 48
    assert x.score - y.score == pytest.approx(400 * math.log10(34 / 14), abs=1e-6)
    assert (x.score + y.score) / 2 == pytest.approx(1000)
    assert win_probability(x.score, y.score) == pytest.approx(34 / 48)


def test_scores_match_a_direct_maximum_likelihood_fit():
    scores, _ = direct_mle(KNOWN)
    ranking = rank(KNOWN, prior=0, rounds=0)
    assert [r.name for r in ranking.ratings] == ["new", "base", "old"]
    for rating in ranking.ratings:
        assert rating.score == pytest.approx(scores[rating.name], abs=0.01)


def test_the_default_prior_moves_scores_only_slightly():
    plain = {r.name: r.score for r in rank(KNOWN, prior=0, rounds=0).ratings}
    for rating in rank(KNOWN, rounds=0).ratings:
        assert abs(rating.score - plain[rating.name]) < 3


def test_bootstrap_intervals_match_the_wald_intervals_of_the_direct_fit():
    scores, errors = direct_mle(KNOWN)
    widths = {name: [] for name in scores}
    for seed in range(5):
        ranking = rank(KNOWN, prior=0, seed=seed)
        for r in ranking.ratings:
            assert r.lower <= r.score <= r.upper
            widths[r.name].append(r.upper - r.lower)
    for name, width in widths.items():
        wald = 2 * 1.96 * errors[name]
        assert np.mean(width) == pytest.approx(wald, rel=0.2), name


def test_bootstrap_is_reproducible_and_100_rounds_by_default():
    first, second = rank(KNOWN, seed=7), rank(KNOWN, seed=7)
    assert first == second and first.rounds == 100 and first.level == 0.95
    assert rank(KNOWN, seed=8).ratings != first.ratings


def test_win_rate_matrix_is_in_rank_order_with_ties_as_half_and_gaps_as_none():
    ranking = rank([("a", "b", 1.0, 3), ("a", "b", 0.5, 2), ("b", "c", 1.0, 4)], rounds=0)
    assert [r.name for r in ranking.ratings] == ["a", "b", "c"]
    assert ranking.win_rate[0] == (None, 4 / 5, None)
    assert ranking.win_rate[1] == (1 / 5, None, 1.0)
    assert ranking.games[1] == (5, 0, 4)
    assert ranking.battles == 9


def test_a_clean_sweep_stays_finite_with_the_default_prior():
    ranking = rank([("winner", "loser", 1.0, 25)])
    best, worst = ranking.ratings
    assert best.name == "winner" and math.isfinite(best.score) and best.score - worst.score > 300


def test_bad_battles_are_refused():
    with pytest.raises(ValueError, match="outcome"):
        tally([("a", "b", 2.0)])
    with pytest.raises(ValueError, match="itself"):
        tally([("a", "a", 1.0)])


def test_empty_input_gives_an_empty_ranking():
    ranking = rank([])
    assert ranking.ratings == () and ranking.battles == 0
