"""Bradley–Terry ranking of checkpoints from pairwise battles, as Chatbot Arena ranks models.

Pure: numpy only, no Django. Input is ``(a, b, outcome)`` battles, or ``(a, b, outcome, count)``
when the caller has already counted them; ``outcome`` is 1.0 when ``a`` won, 0.0 when ``b`` won
and 0.5 for a tie, which counts as half a win for each side.

The fit maximises the Bradley–Terry log-likelihood
``sum over battles of w·log σ(θa − θb) + (1 − w)·log σ(θb − θa)`` by Newton's method with a
backtracking line search. With ``prior > 0`` each checkpoint also plays ``prior`` virtual games
(half won, half lost) against an average checkpoint: a weak penalty that keeps the fit finite when
a checkpoint won or lost every game, and moves scores by only a few points once there are dozens
of votes. ``prior=0`` is the plain maximum-likelihood fit.

Scores are on the Elo scale: ``1000 + 400·log10(e)·(θ − mean θ)``, so a 400-point gap means
10:1 odds. Intervals are percentiles of refits on bootstrap resamples of the battles
(100 rounds by default, seeded, so the same votes always give the same intervals).
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

ELO_BASE = 1000.0
ELO_PER_NAT = 400.0 / math.log(10.0)
PRIOR_GAMES = 0.5
BOOTSTRAP_ROUNDS = 100
MAX_ITERATIONS = 100
TOLERANCE = 1e-10


@dataclass(frozen=True)
class Tally:
    """Battles counted: ``wins[i][j]`` is what ``names[i]`` scored against ``names[j]`` (ties as 0.5)."""

    names: tuple[Hashable, ...]
    wins: np.ndarray  # [m, m] float
    cells: tuple[tuple[int, int, float, int], ...]  # (i, j, outcome for i, count): the resampling units

    @property
    def games(self) -> np.ndarray:
        return self.wins + self.wins.T

    @property
    def battles(self) -> int:
        return sum(count for *_, count in self.cells)


@dataclass(frozen=True)
class Rating:
    name: Hashable
    score: float
    lower: float
    upper: float
    games: int
    wins: float  # ties count half

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.games if self.games else None


@dataclass(frozen=True)
class Ranking:
    """Ratings best first; ``win_rate[i][j]`` is how often ``ratings[i]`` beat ``ratings[j]`` (None: never met)."""

    ratings: tuple[Rating, ...]
    win_rate: tuple[tuple[float | None, ...], ...]
    games: tuple[tuple[int, ...], ...]
    battles: int
    rounds: int
    level: float

    def rating(self, name: Hashable) -> Rating | None:
        return next((r for r in self.ratings if r.name == name), None)


def tally(battles: Iterable[Sequence]) -> Tally:
    """Count ``(a, b, outcome)`` or ``(a, b, outcome, count)`` battles; names keep first-seen order.

    Raises ValueError for an outcome outside [0, 1], a negative count, or a checkpoint battling itself.
    """
    index: dict[Hashable, int] = {}
    counted: dict[tuple[int, int, float], int] = {}
    for battle in battles:
        a, b, outcome = battle[0], battle[1], float(battle[2])
        count = int(battle[3]) if len(battle) > 3 else 1
        if not 0.0 <= outcome <= 1.0:
            raise ValueError(f"outcome must be in [0, 1] (1: a won, 0: b won, 0.5: tie), not {outcome}")
        if count < 0:
            raise ValueError("a battle count cannot be negative")
        if a == b:
            raise ValueError(f"{a!r} cannot battle itself")
        if count == 0:
            continue
        i, j = index.setdefault(a, len(index)), index.setdefault(b, len(index))
        counted[(i, j, outcome)] = counted.get((i, j, outcome), 0) + count
    cells = tuple((i, j, outcome, count) for (i, j, outcome), count in counted.items())
    return Tally(names=tuple(index), wins=_wins(len(index), cells, [c for *_, c in cells]), cells=cells)


def _wins(m: int, cells: Sequence[tuple[int, int, float, int]], counts) -> np.ndarray:
    """The [m, m] wins matrix of ``counts`` per cell, or a stack [R, m, m] for counts [R, cells]."""
    counts = np.asarray(counts, dtype=float)
    stacked = counts.ndim == 2
    counts = counts if stacked else counts[None]
    wins = np.zeros((counts.shape[0], m, m))
    if cells:
        i = np.array([c[0] for c in cells])
        j = np.array([c[1] for c in cells])
        outcome = np.array([c[2] for c in cells])
        for cell in range(len(cells)):  # cells are few (pairs × 3 outcomes); rounds are vectorised
            wins[:, i[cell], j[cell]] += outcome[cell] * counts[:, cell]
            wins[:, j[cell], i[cell]] += (1.0 - outcome[cell]) * counts[:, cell]
    return wins if stacked else wins[0]


def _objective(theta: np.ndarray, wins: np.ndarray, prior: float) -> np.ndarray:
    """Penalised log-likelihood of each fit in the stack: theta [R, m], wins [R, m, m] → [R]."""
    diff = theta[:, :, None] - theta[:, None, :]
    value = -(wins * np.logaddexp(0.0, -diff)).sum(axis=(1, 2))
    if prior:
        value -= prior * 0.5 * (np.logaddexp(0.0, -theta) + np.logaddexp(0.0, theta)).sum(axis=1)
    return value


def fit_strengths(wins: np.ndarray, *, prior: float = PRIOR_GAMES) -> np.ndarray:
    """θ (natural-log strengths, mean zero) maximising the (penalised) Bradley–Terry likelihood.

    ``wins``: [m, m] (what i scored against j), or a stack [R, m, m] of independent fits, which
    are solved together (the bootstrap). Newton steps use the pseudo-inverse, so a disconnected
    comparison graph, or prior=0 where θ is fixed only up to a constant, is fine.
    """
    single = wins.ndim == 2
    wins = wins[None] if single else wins
    rounds, m = wins.shape[0], wins.shape[-1]
    theta = np.zeros((rounds, m))
    if m == 0:
        return theta[0] if single else theta
    games = wins + np.swapaxes(wins, 1, 2)
    current = _objective(theta, wins, prior)
    active = np.ones(rounds, dtype=bool)
    for _ in range(MAX_ITERATIONS):
        p = 1.0 / (1.0 + np.exp(-(theta[:, :, None] - theta[:, None, :])))  # p[r, i, j] = P(i beats j)
        gradient = (wins - games * p).sum(axis=2)
        weights = games * p * np.swapaxes(p, 1, 2)
        hessian = weights - weights.sum(axis=2)[:, :, None] * np.eye(m)  # negative semi-definite
        if prior:
            s = 1.0 / (1.0 + np.exp(-theta))
            gradient += prior * (0.5 - s)
            hessian -= (prior * s * (1.0 - s))[:, :, None] * np.eye(m)
        step = -np.einsum("rij,rj->ri", np.linalg.pinv(hessian), gradient)
        step[~active] = 0.0
        size = np.ones(rounds)
        accepted = ~active
        value = current.copy()
        for _ in range(30):  # backtracking: halve the step until the objective does not fall
            candidate = theta + size[:, None] * step
            trial = _objective(candidate, wins, prior)
            ok = ~accepted & (trial >= current - 1e-12)
            value[ok] = trial[ok]
            accepted |= ok
            if accepted.all():
                break
            size[~accepted] /= 2.0
        moved = accepted & active
        theta[moved] += size[moved, None] * step[moved]
        improvement = np.where(moved, value - current, 0.0)
        current = np.where(moved, value, current)
        active &= moved & ~((improvement < TOLERANCE) & (np.abs(step).max(axis=1) * size < 1e-9))
        if not active.any():
            break
    theta = theta - theta.mean(axis=1, keepdims=True)
    return theta[0] if single else theta


def to_elo(theta: np.ndarray) -> np.ndarray:
    """Elo-scale scores of θ (the last axis), centred on ELO_BASE."""
    return ELO_BASE + ELO_PER_NAT * (theta - theta.mean(axis=-1, keepdims=True))


def rank(
    battles: Iterable[Sequence],
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
    prior: float = PRIOR_GAMES,
    level: float = 0.95,
) -> Ranking:
    """Scores, ``level`` bootstrap intervals and the win-rate matrix of the battles' checkpoints."""
    counted = tally(battles)
    m = len(counted.names)
    if m == 0:
        return Ranking((), (), (), 0, rounds, level)
    scores = to_elo(fit_strengths(counted.wins, prior=prior))
    lower, upper = scores.copy(), scores.copy()
    if rounds and counted.battles:
        rng = np.random.default_rng(seed)
        counts = np.array([c for *_, c in counted.cells], dtype=float)
        resamples = rng.multinomial(int(counts.sum()), counts / counts.sum(), size=rounds)
        draws = to_elo(fit_strengths(_wins(m, counted.cells, resamples), prior=prior))
        tail = (1.0 - level) / 2.0 * 100.0
        lower, upper = np.percentile(draws, tail, axis=0), np.percentile(draws, 100.0 - tail, axis=0)
    games = counted.games
    order = sorted(range(m), key=lambda i: -scores[i])
    ratings = tuple(
        Rating(
            name=counted.names[i],
            score=float(scores[i]),
            lower=float(lower[i]),
            upper=float(upper[i]),
            games=int(round(games[i].sum())),
            wins=float(counted.wins[i].sum()),
        )
        for i in order
    )
    win_rate = tuple(
        tuple(float(counted.wins[i, j] / games[i, j]) if games[i, j] else None for j in order) for i in order
    )
    game_counts = tuple(tuple(int(round(games[i, j])) for j in order) for i in order)
    return Ranking(ratings, win_rate, game_counts, counted.battles, rounds, level)


def win_probability(score_a: float, score_b: float) -> float:
    """P(a beats b) under the fit, from two Elo-scale scores."""
    return 1.0 / (1.0 + 10.0 ** ((score_b - score_a) / 400.0))
