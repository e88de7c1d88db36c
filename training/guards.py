"""Guarding against reward hacking: the signals that a policy is pleasing the reward model, not people.

Three numbers per checkpoint, read together:

- its **proxy reward**: the mean score the latest reward model gives its answers on a fixed prompt
  set (``Checkpoint.meta["guard"]``, written by the battle's generation job);
- its **KL from the base** on the same prompts (how far it has drifted from where the lineage began);
- its **human win rate** from checkpoint battles (the votes of the project's training sources).

``checkpoint_flag`` says, in a sentence, when the proxy reward rose while the human win rate fell: the
signature of reward hacking. The automatic-promotion gate refuses a flagged checkpoint.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings as app_settings
from django.utils import timezone

from annotate.artifacts import model_reference, model_source
from annotate.canary import canary_freeze, canary_pairs
from annotate.models import Checkpoint, Project, Prompt
from rewardmodel.services import latest_reward_model
from training.checkpoints import battle_counts

# Seeds the fixed prompt set's choice: the same prompts for every checkpoint of a project.
GUARD_SEED = "guard-v1"
# Battle votes a head-to-head (or an overall) win rate needs before the flag believes it.
MIN_VOTES = 8


@dataclass(frozen=True)
class WinRate:
    """Wins (ties and "both bad" count half) over ``votes`` battle votes; ``rate`` is None without votes."""

    wins: float
    votes: int

    @property
    def rate(self) -> float | None:
        return self.wins / self.votes if self.votes else None


Counts = list[tuple[int, int, float, int]]  # training.checkpoints.battle_counts' rows


def battle_counts_of(project: Project) -> Counts:
    """The project's battle votes that rank checkpoints here: those of its training vote sources."""
    return battle_counts(project, sources=list(project.training_sources))


def win_rates(project: Project, *, counts: Counts | None = None) -> dict[int, WinRate]:
    """Every battled checkpoint's win rate against all its opponents (one GROUP BY, unless ``counts`` are given)."""
    wins: dict[int, float] = {}
    votes: dict[int, int] = {}
    for a, b, outcome, n in battle_counts_of(project) if counts is None else counts:
        for checkpoint, share in ((a, outcome), (b, 1.0 - outcome)):
            wins[checkpoint] = wins.get(checkpoint, 0.0) + share * n
            votes[checkpoint] = votes.get(checkpoint, 0) + n
    return {checkpoint: WinRate(wins[checkpoint], votes[checkpoint]) for checkpoint in votes}


def head_to_head(checkpoint: Checkpoint, rival: Checkpoint, *, counts: Counts | None = None) -> WinRate:
    """``checkpoint``'s win rate in its battles against ``rival`` alone, whichever side it was shown on."""
    wins, votes = 0.0, 0
    for a, b, outcome, n in battle_counts_of(checkpoint.project) if counts is None else counts:
        if {a, b} == {checkpoint.pk, rival.pk}:
            wins += (outcome if a == checkpoint.pk else 1.0 - outcome) * n
            votes += n
    return WinRate(wins, votes)


def proxy_rewards(checkpoint: Checkpoint, reference: Checkpoint) -> tuple[float, float] | None:
    """The two checkpoints' proxy rewards on one scale, or None when they were not scored comparably.

    The candidate's guard records the rivals scored by the same reward model in the same job
    (``guard["rivals"]``); failing that, the reference's own guard counts when it names the same
    reward model and prompt set. Scores of two different reward models are never compared.
    """
    mine = (checkpoint.meta or {}).get("guard") or {}
    if mine.get("proxy_reward") is None:
        return None
    rival = (mine.get("rivals") or {}).get(str(reference.pk))
    if rival is not None:
        return float(mine["proxy_reward"]), float(rival)
    theirs = (reference.meta or {}).get("guard") or {}
    if (theirs.get("proxy_reward") is not None and theirs.get("reward_model") == mine.get("reward_model")
            and theirs.get("prompts") == mine.get("prompts")):
        return float(mine["proxy_reward"]), float(theirs["proxy_reward"])
    return None


def _references(checkpoint: Checkpoint) -> list[Checkpoint]:
    """What a checkpoint is measured against, in order: its parent, then the project's incumbent."""
    found = [checkpoint.parent] if checkpoint.parent_id else []
    incumbent = Checkpoint.objects.incumbent(checkpoint.project)
    if incumbent is not None and incumbent.pk not in (checkpoint.pk, checkpoint.parent_id):
        found.append(incumbent)
    return found


def checkpoint_flag(checkpoint: Checkpoint, *, min_votes: int = MIN_VOTES, counts: Counts | None = None) -> str | None:
    """A sentence when ``checkpoint``'s proxy reward rose while its human win rate fell, else None.

    Measured against its parent, else the project's incumbent (the first of them whose proxy reward
    is on the same scale, see ``proxy_rewards``). "Rose": a higher mean reward-model score on the
    fixed prompt set. "Fell": it wins under half of at least ``min_votes`` battle votes against that
    reference; or, without enough head-to-head votes, its overall battle win rate is below the
    reference's (each on at least ``min_votes`` votes). None when there is not enough evidence
    either way: no guard metrics yet, nothing comparable, or too few votes. ``counts``: the project's battle
    counts (``battle_counts_of``) when the caller has them already.
    """
    for reference in _references(checkpoint):
        rewards = proxy_rewards(checkpoint, reference)
        if rewards is None:
            continue
        mine, theirs = rewards
        if mine <= theirs:
            return None
        rose = f"{checkpoint.name}'s proxy reward rose ({theirs:.3f} for {reference.name} → {mine:.3f})"
        counts = battle_counts_of(checkpoint.project) if counts is None else counts
        duel = head_to_head(checkpoint, reference, counts=counts)
        if duel.votes >= min_votes:
            if duel.rate < 0.5:
                return (f"{rose} while people preferred {reference.name}: it won {duel.rate:.0%} of "
                        f"{duel.votes} battle votes against it. Possible reward hacking.")
            return None
        rates = win_rates(checkpoint.project, counts=counts)
        own, other = rates.get(checkpoint.pk), rates.get(reference.pk)
        if own and other and own.votes >= min_votes and other.votes >= min_votes and own.rate < other.rate:
            return (f"{rose} while its human win rate fell ({other.rate:.0%} of {other.votes} battle votes for "
                    f"{reference.name} → {own.rate:.0%} of {own.votes}). Possible reward hacking.")
        return None
    return None


# The measurements, taken on a worker (the generation job of a battle, the reward-model job).


def guard_prompts(project: Project, *, count: int | None = None) -> list[Prompt]:
    """The project's fixed prompt set: ``count`` (default ``GUARD_PROMPTS``) prompts ranked by a seeded hash of
    their content, so every checkpoint is measured on the same prompts, and a prompt added later joins the
    set only when it outranks one (the set does not reshuffle). In id order."""
    count = app_settings.GUARD_PROMPTS if count is None else count
    rows = Prompt.objects.filter(project=project).values_list("id", "content_hash")
    ranked = sorted(rows, key=lambda row: hashlib.sha256(f"{GUARD_SEED}:{row[1]}".encode()).hexdigest())
    return list(Prompt.objects.filter(pk__in=[pk for pk, _ in ranked[:count]]).order_by("id"))


def base_of(checkpoint: Checkpoint) -> Checkpoint | None:
    """The model a checkpoint's drift is measured from: the root of its parent chain, or, for a checkpoint
    with no parent, the project's first checkpoint with weights (which may be itself). None: nothing has
    weights."""
    seen, node = {checkpoint.pk}, checkpoint
    while node.parent_id is not None and node.parent_id not in seen:
        seen.add(node.parent_id)
        node = node.parent
    if node.pk != checkpoint.pk:
        return node
    return (Checkpoint.objects.filter(project_id=checkpoint.project_id).exclude(uri="")
            .order_by("created_at", "id").first())


def _device() -> tuple[str, str]:
    from training.lib.generation import resolve_device, resolve_dtype

    device = resolve_device(app_settings.WORKER_DEVICE)
    return device, resolve_dtype(app_settings.WORKER_DTYPE, device)


def canary_set(project: Project) -> list[dict]:
    """Freeze the canaries whose votes are complete, then every frozen one as ``{"prompt", "a", "b", "answer"}``."""
    canary_freeze(project)
    return canary_pairs(project)


def canary_metrics(project: Project, folder: Path | str) -> dict:
    """Load the reward model in ``folder`` on this worker's device (proof that it loads) and score it on the
    project's `canary_set`: ``canary_accuracy`` (None without a decided pair), ``canary_pairs`` scored,
    ``canary_ties`` left out (a tie has no right side). A job on other processes does this itself
    (`training.reward`)."""
    from training.lib.guard import canary_figures

    return canary_figures(folder, canary_set(project), device=_device()[0])


def guard_record(*, project: Project, checkpoints: list[Checkpoint], samples: dict[int, dict[int, str]],
                 log: Callable[[str], object] = print,
                 measure: Callable[[dict, dict[str, str]], dict] | None = None) -> list[dict]:
    """Measure each checkpoint on the fixed prompt set from its ``samples`` (prompt id -> answer text, sampled
    from that checkpoint) and store ``meta["guard"]``: the latest reward model's mean score (``proxy_reward``; None before
    the first reward model), the KL from its base (``kl_from_base``; None without local weights), the prompt
    ids, the sample count, and ``rivals``: the other checkpoints' proxy rewards from the same reward model.

    ``measure(plan, paths)``: where the models are read (`training.ray_jobs.measure_on_ray` on a cluster);
    by default on this worker's device (`training.lib.guard.measure`)."""
    prompts = guard_prompts(project)
    if not prompts or not checkpoints:
        return []
    reward_model = latest_reward_model(project)
    groups = {c.pk: [(p.messages, samples[c.pk][p.pk]) for p in prompts if p.pk in samples.get(c.pk, {})]
              for c in checkpoints}
    plan, paths = _plan(checkpoints, groups, reward_model)
    if measure is None:
        from training.lib.guard import measure as measure_here

        device, dtype = _device()
        measured = measure_here(plan, {name: model_source(ref) for name, ref in paths.items()}, device=device,
                                dtype=dtype)
    else:
        measured = measure(plan, paths)
    proxies = {int(key): value for key, value in measured["proxies"].items()}
    kls = {int(key): value for key, value in measured["kl"].items()}
    recorded = []
    for checkpoint in checkpoints:
        base = base_of(checkpoint)
        kl = 0.0 if base is not None and base.pk == checkpoint.pk else kls.get(checkpoint.pk)
        guard = {
            "proxy_reward": proxies.get(checkpoint.pk), "kl_from_base": kl,
            "prompts": [p.pk for p in prompts], "samples": len(groups[checkpoint.pk]),
            "reward_model": reward_model and reward_model.pk,
            "reward_model_version": reward_model and reward_model.version,
            "base": base and base.pk, "base_name": base and base.name,
            "rivals": {str(pk): value for pk, value in proxies.items() if pk != checkpoint.pk},
            "measured_at": timezone.now().isoformat(),
        }
        checkpoint.refresh_from_db(fields=["meta"])
        checkpoint.meta = {**checkpoint.meta, "guard": guard}
        checkpoint.save(update_fields=["meta"])
        proxy = "no reward model yet" if guard["proxy_reward"] is None else f"proxy reward {guard['proxy_reward']:.3f}"
        drift = "KL unknown" if kl is None else f"KL from {base.name} {kl:.3f}"
        log(f"guard: {checkpoint.name}: {proxy}, {drift} on {guard['samples']} samples")
        recorded.append(guard)
    return recorded


def _plan(checkpoints: list[Checkpoint], groups: dict[int, list], reward_model) -> tuple[dict, dict[str, str]]:
    """(plan, paths) for `training.lib.guard.measure`: every model by a name, the names' references apart
    (`model_reference`: a stored one is pulled where it is read, here or on a cluster's node). A KL needs both
    models' weights and a sample."""
    paths: dict[str, str] = {}
    if reward_model is not None:
        paths["reward_model"] = model_reference(reward_model.artifact_uri)
    kl: dict[str, list[str]] = {}
    for checkpoint in checkpoints:
        base = base_of(checkpoint)
        if (base is None or base.pk == checkpoint.pk or not groups[checkpoint.pk] or not checkpoint.uri
                or checkpoint.endpoint_url or not base.uri):
            continue
        paths[f"policy_{checkpoint.pk}"] = model_reference(checkpoint.uri)
        paths[f"base_{base.pk}"] = model_reference(base.uri)
        kl[str(checkpoint.pk)] = [f"policy_{checkpoint.pk}", f"base_{base.pk}"]
    plan = {"reward_model": "reward_model" if reward_model is not None else None,
            "groups": {str(pk): [[list(m), t] for m, t in pairs] for pk, pairs in groups.items()}, "kl": kl}
    return plan, paths


