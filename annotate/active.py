"""Active selection: which of a project's unvoted pairs the queue serves first, and which it holds back.

A project's ``selection`` policy scores each pair from the latest reward model's ensemble: per head k,
rA_k and rB_k are the rewards of the two sides, and p_k = sigmoid(rA_k − rB_k) is head k's predicted
probability that A is preferred (the Bradley–Terry model the heads were trained under).

- ``fifo``: no scores; every pair is served, oldest first (priority 0), as before active selection.
- ``uncertainty``: 1 − |2·p̄ − 1| with p̄ = mean_k p_k: how close the ensemble's mean prediction is to a
  coin flip (1 at p̄ = 0.5, 0 when the ensemble is sure). It is the *predictive* uncertainty: it also
  ranks pairs whose sides are truly equal (the noise no label can remove) high, and it works with one head.
- ``bald``: BALD (Houlsby et al. 2011, "Bayesian Active Learning for Classification and Preference
  Learning"): the mutual information between the label and the ensemble member, H(p̄) − mean_k H(p_k),
  divided by ln 2 so it lies in [0, 1]. It is high only where confident heads disagree (what a label
  would settle) and 0 where they agree, however unsure they agree to be: a coin-flip pair that every head
  calls a coin flip teaches nothing. It is the epistemic term of BAL-PM (Melo et al. 2024, the 33–68%
  fewer labels issue 18 cites), and needs nothing but the bootstrap ensemble the reward model already
  trains (``ensemble_size`` heads, each on its own Poisson resample). With one head there is no
  disagreement to measure: BALD then ranks as ``uncertainty`` does.

The queue reads only ``Comparison.priority`` (then age): a scored pair gets a priority below 0 by the
rank of its score (-1 for the best, -2 for the next, ...), so checkpoint battles (priority
10) and pairs no model has scored yet (priority 0: served first, oldest first, as fifo would, until the
next refresh scores them) stay ahead. With ``serve_per_prompt = N > 0``, of each prompt's unvoted
candidate pairs the N best scored are "open" (served) and the rest "pool" (held back); a pair already
being voted on (a vote or a live lease) counts as one of its prompt's N.

Nothing here runs on the vote or claim path. A refresh (``selection_apply``) runs in a Celery task:
after every reward-model publish (with new scores, ``training.selection``), when a manager changes the
policy, and when a project with pool pairs has no open pair left (``on_votes_recorded``, one indexed
statement after each vote commits: stored scores, no model). Its writes touch only unvoted, unleased
pairs, and say so again in the UPDATE's WHERE.

The math (``preference_probs`` to ``choose_served``) is pure numpy, shared with ``bench/active.py``.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from django.db import transaction
from django.db.models import Case, Exists, F, FloatField, IntegerField, OuterRef, Q, Value, When
from django.db.models import CharField as CharValue
from django.utils import timezone

from annotate import sql
from annotate.models import Comparison, Completion, Lease, Project, Vote
from annotate.services import UNPAIRED_CHECKPOINTS, comparisons_create

POLICIES = ("fifo", "uncertainty", "bald")
# Scored pairs sit below 0, ranked by score (unscored pairs, and anything a person queued at 0 or above,
# come first; battles at 10 long before).
ACTIVE_HIGHEST = -1
SELECT_PAIRS = "training.select_pairs"  # the refresh task's name (training.tasks), enqueued by name
CHUNK = 500
_LN2 = math.log(2.0)


# -- the math ------------------------------------------------------------------------------------


def preference_probs(rewards_a: np.ndarray, rewards_b: np.ndarray) -> np.ndarray:
    """p_k = sigmoid(rA_k − rB_k): [N, K] per-head rewards of each pair's two sides → [N, K]."""
    diff = np.asarray(rewards_a, dtype=np.float64) - np.asarray(rewards_b, dtype=np.float64)
    if diff.ndim == 1:
        diff = diff[:, None]
    return 0.5 * (1.0 + np.tanh(0.5 * diff))  # sigmoid without overflow


def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in nats, 0 at p = 0 or 1."""
    q = np.clip(p, 1e-12, 1.0 - 1e-12)
    return -(q * np.log(q) + (1.0 - q) * np.log1p(-q))


def uncertainty_scores(rewards_a: np.ndarray, rewards_b: np.ndarray) -> np.ndarray:
    """1 − |2·p̄ − 1| per pair, in [0, 1]: 1 when the ensemble's mean prediction is a coin flip."""
    mean = preference_probs(rewards_a, rewards_b).mean(axis=1)
    return 1.0 - np.abs(2.0 * mean - 1.0)


def bald_scores(rewards_a: np.ndarray, rewards_b: np.ndarray) -> np.ndarray:
    """(H(p̄) − mean_k H(p_k)) / ln 2 per pair, in [0, 1]: 0 when the heads agree, 1 when half the heads
    are sure of A and half sure of B. All zeros with one head (see ``pair_scores``)."""
    probs = preference_probs(rewards_a, rewards_b)
    mutual = _entropy(probs.mean(axis=1)) - _entropy(probs).mean(axis=1)
    return np.clip(mutual / _LN2, 0.0, 1.0)


def pair_scores(policy: str, rewards_a: np.ndarray, rewards_b: np.ndarray) -> np.ndarray:
    """The policy's score per pair (higher: ask sooner) from [N, K] per-head rewards; NaN under fifo.

    BALD with a one-head model falls back to ``uncertainty``: its mutual information is 0 everywhere.
    """
    rewards_a = np.asarray(rewards_a, dtype=np.float64)
    if policy == "fifo":
        return np.full(len(rewards_a), np.nan)
    if policy == "uncertainty" or (policy == "bald" and (rewards_a.ndim == 1 or rewards_a.shape[1] < 2)):
        return uncertainty_scores(rewards_a, rewards_b)
    if policy == "bald":
        return bald_scores(rewards_a, rewards_b)
    raise ValueError(f"selection must be one of {', '.join(POLICIES)}, not {policy!r}")


def priorities(scores: np.ndarray) -> np.ndarray:
    """Queue priorities: the best score gets ACTIVE_HIGHEST (-1), the next distinct score -2, and so on
    (equal scores share one, so age decides between them); NaN (unscored) gets 0. By rank, not by value:
    BALD on a young ensemble can be 1e-10 everywhere, and the order must survive whatever the scale."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros(len(scores), dtype=np.int64)
    scored = ~np.isnan(scores)
    if scored.any():
        _, rank = np.unique(-scores[scored], return_inverse=True)  # ascending −score: best first
        out[scored] = ACTIVE_HIGHEST - rank.reshape(-1)
    return out


def choose_served(prompt_ids: Sequence[int], scores: np.ndarray, *, per_prompt: int,
                  taken: Mapping[int, int] | None = None) -> np.ndarray:
    """Which candidate pairs to serve: a bool mask, True for "open", False for "pool".

    ``per_prompt`` 0 serves every pair. Otherwise each prompt serves its ``per_prompt`` best scored pairs,
    less ``taken[prompt]`` (its pairs already being voted on, which are served whatever happens). Unscored
    pairs (NaN) rank after scored ones; ties keep the given order (pass pairs oldest first).
    """
    n = len(prompt_ids)
    if per_prompt <= 0:
        return np.ones(n, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.arange(n), -ranked))  # best first, then the given order
    served = np.zeros(n, dtype=bool)
    left = {}
    for i in order:
        prompt = prompt_ids[i]
        if prompt not in left:
            left[prompt] = per_prompt - (taken or {}).get(prompt, 0)
        if left[prompt] > 0:
            served[i] = True
            left[prompt] -= 1
    return served


# -- candidate pairs -----------------------------------------------------------------------------


def candidate_pairs_create(*, project: Project, prompt_ids: Iterable[int] | None = None,
                           seed: int | None = None) -> int:
    """All C(k, 2) pairs of each prompt's k completions (gold's and human edits aside), as comparisons
    queued for active selection; return how many were new.

    Under an active policy with ``serve_per_prompt``, each prompt's pairs beyond its share start in the
    pool, and a refresh with scores is queued once this commits.
    """
    completions = (Completion.objects.filter(prompt__project=project)
                   .exclude(checkpoint__name__in=UNPAIRED_CHECKPOINTS).only("id", "prompt_id").order_by("id"))
    if prompt_ids is not None:
        prompt_ids = list(prompt_ids)
        completions = completions.filter(prompt_id__in=prompt_ids)
    by_prompt: dict[int, list[Completion]] = {}
    for completion in completions:
        by_prompt.setdefault(completion.prompt_id, []).append(completion)
    pairs = [(first, second) for group in by_prompt.values()
             for i, first in enumerate(group) for second in group[i + 1:]]
    with transaction.atomic():
        created = comparisons_create(pairs=pairs, reason=Comparison.Reason.ACTIVE, rng=random.Random(seed))
        if created and project.selection != "fifo":
            selection_apply(project=project)
            transaction.on_commit(lambda: selection_enqueue(project.pk, rescore=True))
    return created


# -- the refresh's writes ------------------------------------------------------------------------


def _live_lease(now) -> Exists:
    return Exists(Lease.objects.filter(comparison=OuterRef("pk"), expires_at__gt=now))


def _has_vote() -> Exists:
    return Exists(Vote.objects.filter(comparison=OuterRef("pk")))


def free_pairs(project: Project, now=None):
    """The pairs active selection may rewrite: the project's open or pool pairs that are not battles,
    gold, human edits or canaries, with no vote and no live lease."""
    now = now or timezone.now()
    return (Comparison.objects.filter(project=project, state__in=(Comparison.State.OPEN, Comparison.State.POOL),
                                      vote_count=0, canary=False)
            .exclude(reason__in=(Comparison.Reason.BATTLE, Comparison.Reason.GOLD, Comparison.Reason.EDIT))
            .exclude(_live_lease(now)).exclude(_has_vote()))


def _taken_per_prompt(project: Project, now) -> dict[int, int]:
    """Per prompt, its served pairs active selection may not touch: open, selectable, voted or leased."""
    busy = (Comparison.objects.filter(project=project, state=Comparison.State.OPEN, canary=False)
            .exclude(reason__in=(Comparison.Reason.BATTLE, Comparison.Reason.GOLD, Comparison.Reason.EDIT))
            .filter(Q(vote_count__gt=0) | _live_lease(now)))
    taken: dict[int, int] = {}
    for prompt_id in busy.values_list("prompt_id", flat=True):
        taken[prompt_id] = taken.get(prompt_id, 0) + 1
    return taken


@dataclass(frozen=True)
class SelectionResult:
    policy: str
    considered: int  # free pairs looked at
    scored: int  # of those, with a score
    changed: int  # rows written
    pooled: int  # free pairs left in the pool


def selection_apply(*, project: Project, scores: Mapping[int, float] | None = None) -> SelectionResult:
    """Rewrite the free pairs' priority, score and state for the project's policy.

    ``scores`` (comparison id → score in [0, 1]) are new scores from a reward model; without them the
    stored ``selection_score`` is used (a refresh that only re-chooses, e.g. when the pool must refill).
    Under fifo every pair selection had touched returns to the queue at priority 0, unscored.
    """
    project.refresh_from_db(fields=["selection", "serve_per_prompt"])
    now = timezone.now()
    rows = list(free_pairs(project, now).order_by("created_at", "id")
                .values_list("id", "prompt_id", "priority", "selection_score", "state"))
    targets: dict[int, tuple[int, float | None, str]] = {}
    if project.selection == "fifo":
        for pk, _, _, score, state in rows:
            if score is not None or state == Comparison.State.POOL:
                targets[pk] = (0, None, Comparison.State.OPEN)
        pooled = 0
        scored = 0
    else:
        if scores is None:  # re-choose from the stored scores
            values = np.array([np.nan if score is None else score for _, _, _, score, _ in rows], dtype=np.float64)
        else:
            values = np.array([scores.get(pk, np.nan) for pk, *_ in rows], dtype=np.float64)
        served = choose_served([row[1] for row in rows], values, per_prompt=project.serve_per_prompt,
                               taken=_taken_per_prompt(project, now))
        wanted = priorities(values)
        for (pk, _, priority, score, state), value, open_, level in zip(rows, values, served, wanted, strict=True):
            new_score = None if np.isnan(value) else float(value)
            new_priority = int(level) if new_score is not None else (priority if score is None else 0)
            new_state = Comparison.State.OPEN if open_ else Comparison.State.POOL
            if (new_priority, new_score, new_state) != (priority, score, state):
                targets[pk] = (new_priority, new_score, new_state)
        pooled = int((~served).sum())
        scored = int((~np.isnan(values)).sum())
    changed = _write(targets)
    if pooled:
        _pooling[project.pk] = (time.monotonic(), True)  # this process knows at once; others within POOL_CHECK_S
    return SelectionResult(policy=project.selection, considered=len(rows), scored=scored, changed=changed,
                           pooled=pooled)


def _write(targets: Mapping[int, tuple[int, float | None, str]]) -> int:
    """Write the targets in chunks, one short transaction each: lock the chunk's rows (skipping any a
    claim holds right now), then update only those still open or pool with no vote and no live lease,
    counted by the UPDATE itself after the lock."""
    written = 0
    ids = sorted(targets)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        with transaction.atomic():
            locked = list(Comparison.objects.select_for_update(skip_locked=True).filter(pk__in=chunk)
                          .values_list("pk", flat=True))
            if not locked:
                continue
            now = timezone.now()
            written += (
                Comparison.objects.filter(pk__in=locked, vote_count=0,
                                          state__in=(Comparison.State.OPEN, Comparison.State.POOL))
                .exclude(_live_lease(now)).exclude(_has_vote())
                .update(
                    priority=Case(*[When(pk=pk, then=Value(targets[pk][0])) for pk in locked],
                                  default=F("priority"), output_field=IntegerField()),
                    selection_score=Case(*[When(pk=pk, then=Value(targets[pk][1])) for pk in locked],
                                         default=F("selection_score"), output_field=FloatField()),
                    state=Case(*[When(pk=pk, then=Value(targets[pk][2])) for pk in locked],
                               default=F("state"), output_field=CharValue()),
                )
            )
    return written


# -- when a refresh is queued --------------------------------------------------------------------


def selection_enqueue(project_id: int, *, rescore: bool) -> None:
    """Queue the refresh by name: with ``rescore`` on the reward model's queue ("gpu"), which scores
    with the latest reward model; without, on "default" (stored scores only: no model, no wait behind a
    policy run on the GPU worker)."""
    from celery import signature

    from config.celery import app

    if app.conf.task_always_eager and SELECT_PAIRS not in app.tasks:
        app.autodiscover_tasks(["training"], force=True)  # eager: the task runs here, so it must be known
    signature(SELECT_PAIRS, args=[project_id], kwargs={"rescore": rescore}, app=app).apply_async(
        queue="gpu" if rescore else "default")


# Whether a project holds pool pairs at all, asked once per POOL_CHECK_S per process: most projects never pool
# (fifo, or serve_per_prompt 0), and asking after every vote cost the vote path measurably (bench/vote_http.py:
# ~0.8 ms more PostgreSQL CPU per vote, 20-35% fewer votes/s, with the check as one bound statement per vote).
POOL_CHECK_S = 30.0
_pooling: dict[int, tuple[float, bool]] = {}  # project id -> (when asked, whether it had pool pairs)
_HAS_POOL = f"SELECT 1 FROM annotate_comparison WHERE project_id = %s AND state = '{Comparison.State.POOL.value}' LIMIT 1"
# A project that pools: none of its pairs is open (the queue is dry). Index ``queue_order`` (project, state, ...).
_NONE_OPEN = f"""
    SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM annotate_comparison WHERE project_id = %s
                               AND state = '{Comparison.State.OPEN.value}')
"""


def _pools(project_id: int) -> bool:
    now = time.monotonic()
    asked = _pooling.get(project_id)
    if asked is None or now - asked[0] > POOL_CHECK_S:
        asked = (now, bool(sql.value(_HAS_POOL, [project_id])))
        _pooling[project_id] = asked
    return asked[1]


def on_votes_recorded(sender, *, project_id: int, **_) -> None:
    """After votes commit: a project whose pool holds pairs but whose queue has no open pair left gets a
    refresh that opens the next best pairs (the last vote before the queue runs dry is the one that sees it,
    so every vote of a pooling project asks: one indexed statement, outside the vote's transaction; a project
    that does not pool costs one statement per process every ``POOL_CHECK_S``)."""
    if _pools(project_id) and sql.value(_NONE_OPEN, [project_id]):
        selection_enqueue(project_id, rescore=False)
