"""A pairwise Dawid–Skene model of who to trust: pure numpy, no Django.

Each comparison has a hidden answer ``z``: which completion is better, "a" or "b" (the comparison's
sides). Each person ``w`` answers from a confusion matrix over what they SAW: ``theta[w, t, o]`` is
the chance they click ``o`` (left, right, tie, both bad) when the better answer was shown on side
``t`` (left, right). Modelling screen sides, not completions, is what catches position bias: a
person who always clicks left has ``theta[w, 0, 0] = theta[w, 1, 0] = 1``, and their clicks then
say nothing about ``z``. A vote whose display was swapped against the comparison's current sides
(``swapped``; rare: only where positions changed after the vote) maps ``t = 1 - z``.

Ties and both-bad votes are observations like any other (a fourth-class column each), so a person
who ties a lot is modelled, but they move the posterior over "a"/"b" only if that person ties more
often on one side, which nobody does on purpose.

Fitted by EM (Dawid & Skene 1979), initialised from the majority of the directional votes. Gold
comparisons (known answers) are clamped to their answer at every E-step, as crowd-kit's
``DawidSkene.fit(true_labels=...)`` does. The class prior is fixed at 0.5 (sides are drawn at
random; see ``fit``). With ``smoothing`` > 0 each person's matrix gets
pseudo-counts (``PSEUDO_COUNTS`` times ``smoothing``: a mildly competent prior, so someone with
three votes does not get a perfect matrix and an overwhelming weight) and the class prior a Beta
(1 + smoothing) prior when it is learnt; with ``smoothing=0, learn_prior=True`` the fit is the plain
maximum-likelihood EM, the same fixed point as crowd-kit 1.4.2's ``DawidSkene``
(tests/annotate/test_reliability.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDES = ("a", "b")  # the hidden answer: which side holds the better completion
CLICKS = ("a", "b", "tie", "both_bad")  # what a person clicked, as shown on their screen
#: Prior pseudo-counts per person, rows: better shown left / right; columns: the four clicks.
PSEUDO_COUNTS = np.array([[2.0, 1.0, 0.5, 0.5], [1.0, 2.0, 0.5, 0.5]])
_EPS = 1e-10


@dataclass(frozen=True)
class Person:
    """What the fit says about one person."""

    competence: float  # chance of picking the better side when picking a side, both sides averaged (0.5: chance)
    position_bias: float  # chance of picking the left side when picking a side, minus 0.5 (+0.5: always left)
    tie_rate: float  # chance of clicking tie or both bad
    votes: int


@dataclass(frozen=True)
class Fit:
    """posterior [n_items, 2]: P(z = a), P(z = b); confusion [n_workers, 2, 4]; prior [2]."""

    posterior: np.ndarray
    confusion: np.ndarray
    prior: np.ndarray
    iterations: int
    converged: bool
    log_likelihood: float
    votes_per_worker: np.ndarray

    @property
    def p_a(self) -> np.ndarray:
        return self.posterior[:, 0]

    @property
    def confidence(self) -> np.ndarray:
        """The posterior probability of the more likely answer (0.5 to 1)."""
        return self.posterior.max(axis=1)

    def person(self, worker: int) -> Person:
        theta = self.confusion[worker]
        left_given = theta[:, 0] / np.maximum(theta[:, 0] + theta[:, 1], _EPS)  # P(left | side, picked a side)
        return Person(
            competence=float((left_given[0] + (1 - left_given[1])) / 2),
            position_bias=float(left_given.mean() - 0.5),
            tie_rate=float(theta[:, 2:].sum(axis=1).mean()),
            votes=int(self.votes_per_worker[worker]),
        )


def fit(
    items: np.ndarray,
    workers: np.ndarray,
    clicks: np.ndarray,
    *,
    n_items: int,
    n_workers: int,
    swapped: np.ndarray | None = None,
    gold: dict[int, int] | None = None,
    smoothing: float = 1.0,
    learn_prior: bool = False,
    max_iter: int = 200,
    tol: float = 1e-7,
) -> Fit:
    """Fit the model to votes given as parallel integer arrays (one entry per vote).

    items: comparison index in [0, n_items); workers: person index in [0, n_workers); clicks: index
    into CLICKS, as displayed; swapped: bool per vote (display swapped against the sides); gold:
    {item: 0 for a, 1 for b}. An item without votes keeps the prior. Stops when no posterior moves by
    more than ``tol`` or after ``max_iter`` EM rounds.

    ``learn_prior``: fit P(z = a) too (crowd-kit does). Off by default, P(z = a) = 0.5: the app draws
    each comparison's sides at random, so the better answer is on the left half the time by
    construction. Knowing it is what keeps the fit from the degenerate answer "everything is a, and
    the person who always clicks left is the expert", which a free prior reaches when few careful
    people overlap and there is no gold.
    """
    items, workers, clicks = (np.asarray(x, dtype=np.int64) for x in (items, workers, clicks))
    swap = np.zeros(len(items), dtype=np.int64) if swapped is None else np.asarray(swapped, dtype=np.int64)
    if not (len(items) == len(workers) == len(clicks) == len(swap)):
        raise ValueError("items, workers, clicks and swapped must have one entry per vote")
    if len(items) and (items.min() < 0 or items.max() >= n_items or workers.min() < 0 or workers.max() >= n_workers
                       or clicks.min() < 0 or clicks.max() >= len(CLICKS)):
        raise ValueError("an index is out of range")
    gold = gold or {}
    gold_items = np.fromiter(gold.keys(), dtype=np.int64, count=len(gold))
    gold_sides = np.fromiter(gold.values(), dtype=np.int64, count=len(gold))

    def clamp(q: np.ndarray) -> np.ndarray:
        if len(gold_items):
            q[gold_items] = np.eye(2)[gold_sides]
        return q

    q = clamp(_majority(items, clicks, swap, n_items))
    confusion, prior = _m_step(q, items, workers, clicks, swap, n_workers, smoothing, learn_prior)
    iterations, converged, log_likelihood = 0, False, float("nan")
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        new_q, log_likelihood = _e_step(confusion, prior, items, workers, clicks, swap, n_items)
        new_q = clamp(new_q)
        confusion, prior = _m_step(new_q, items, workers, clicks, swap, n_workers, smoothing, learn_prior)
        moved = float(np.abs(new_q - q).max()) if n_items else 0.0
        q = new_q
        if moved < tol:
            converged = True
            break
    per_worker = np.bincount(workers, minlength=n_workers)
    return Fit(q, confusion, prior, iterations, converged, log_likelihood, per_worker)


def _majority(items: np.ndarray, clicks: np.ndarray, swap: np.ndarray, n_items: int) -> np.ndarray:
    """Soft majority of the directional votes, in the comparison's frame; 0.5/0.5 without any."""
    side = np.where(clicks < 2, clicks ^ swap, -1)  # the side picked, in the comparison's frame
    n_a = np.bincount(items[side == 0], minlength=n_items).astype(float)
    n_b = np.bincount(items[side == 1], minlength=n_items).astype(float)
    total = n_a + n_b
    p_a = np.divide(n_a, total, out=np.full(n_items, 0.5), where=total > 0)
    return np.stack([p_a, 1 - p_a], axis=1)


def _m_step(q, items, workers, clicks, swap, n_workers, smoothing, learn_prior) -> tuple[np.ndarray, np.ndarray]:
    counts = np.zeros((n_workers, 2, len(CLICKS)))
    for z in (0, 1):
        np.add.at(counts, (workers, z ^ swap, clicks), q[items, z])
    counts += smoothing * PSEUDO_COUNTS
    counts = np.maximum(counts, _EPS)
    confusion = counts / counts.sum(axis=2, keepdims=True)
    if not learn_prior or not len(q):
        return confusion, np.full(2, 0.5)
    prior = (q.sum(axis=0) + smoothing) / (len(q) + 2 * smoothing)
    return confusion, prior


def _e_step(confusion, prior, items, workers, clicks, swap, n_items) -> tuple[np.ndarray, float]:
    log_joint = np.tile(np.log(np.maximum(prior, _EPS)), (n_items, 1))
    for z in (0, 1):
        log_joint[:, z] += np.bincount(items, weights=np.log(confusion[workers, z ^ swap, clicks]), minlength=n_items)
    top = log_joint.max(axis=1, keepdims=True)
    unnormalised = np.exp(log_joint - top)
    total = unnormalised.sum(axis=1, keepdims=True)
    return unnormalised / total, float((np.log(total) + top).sum())
