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

from dataclasses import dataclass

from django.db.models import Count, F, Q

from annotate.models import Checkpoint, Comparison, Vote

# Battle votes a head-to-head (or an overall) win rate needs before the flag believes it.
MIN_VOTES = 8
OUTCOME = {Vote.Choice.A: 1.0, Vote.Choice.B: 0.0, Vote.Choice.TIE: 0.5, Vote.Choice.BOTH_BAD: 0.5}


@dataclass(frozen=True)
class WinRate:
    """Wins (ties and "both bad" count half) over ``votes`` battle votes; ``rate`` is None without votes."""

    wins: float
    votes: int

    @property
    def rate(self) -> float | None:
        return self.wins / self.votes if self.votes else None


def _battle_votes(project):
    """The project's battle votes that rank checkpoints: its training vote sources, pairs not removed."""
    return (
        Vote.objects.filter(comparison__project=project, comparison__reason=Comparison.Reason.BATTLE,
                            source__in=list(project.training_sources))
        .exclude(comparison__state=Comparison.State.REMOVED)
        .exclude(comparison__completion_a__checkpoint_id=F("comparison__completion_b__checkpoint_id"))
    )


def win_rates(project) -> dict[int, WinRate]:
    """Every battled checkpoint's win rate against all its opponents (one GROUP BY)."""
    rows = (_battle_votes(project)
            .values_list("comparison__completion_a__checkpoint_id", "comparison__completion_b__checkpoint_id",
                         "choice")
            .annotate(n=Count("id")).order_by())
    wins: dict[int, float] = {}
    votes: dict[int, int] = {}
    for a, b, choice, n in rows:
        outcome = OUTCOME[choice]
        for checkpoint, share in ((a, outcome), (b, 1.0 - outcome)):
            wins[checkpoint] = wins.get(checkpoint, 0.0) + share * n
            votes[checkpoint] = votes.get(checkpoint, 0) + n
    return {checkpoint: WinRate(wins[checkpoint], votes[checkpoint]) for checkpoint in votes}


def head_to_head(checkpoint: Checkpoint, rival: Checkpoint) -> WinRate:
    """``checkpoint``'s win rate in its battles against ``rival`` alone, whichever side it was shown on."""
    pair = (Q(comparison__completion_a__checkpoint=checkpoint, comparison__completion_b__checkpoint=rival)
            | Q(comparison__completion_a__checkpoint=rival, comparison__completion_b__checkpoint=checkpoint))
    rows = (_battle_votes(checkpoint.project).filter(pair)
            .values_list("comparison__completion_a__checkpoint_id", "choice").annotate(n=Count("id")).order_by())
    wins, votes = 0.0, 0
    for a, choice, n in rows:
        outcome = OUTCOME[choice]
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


def checkpoint_flag(checkpoint: Checkpoint, *, min_votes: int = MIN_VOTES) -> str | None:
    """A sentence when ``checkpoint``'s proxy reward rose while its human win rate fell, else None.

    Measured against its parent, else the project's incumbent (the first of them whose proxy reward
    is on the same scale, see ``proxy_rewards``). "Rose": a higher mean reward-model score on the
    fixed prompt set. "Fell": it wins under half of at least ``min_votes`` battle votes against that
    reference; or, without enough head-to-head votes, its overall battle win rate is below the
    reference's (each on at least ``min_votes`` votes). None when there is not enough evidence
    either way: no guard metrics yet, nothing comparable, or too few votes.
    """
    for reference in _references(checkpoint):
        rewards = proxy_rewards(checkpoint, reference)
        if rewards is None:
            continue
        mine, theirs = rewards
        if mine <= theirs:
            return None
        rose = f"{checkpoint.name}'s proxy reward rose ({theirs:.3f} for {reference.name} → {mine:.3f})"
        duel = head_to_head(checkpoint, reference)
        if duel.votes >= min_votes:
            if duel.rate < 0.5:
                return (f"{rose} while people preferred {reference.name}: it won {duel.rate:.0%} of "
                        f"{duel.votes} battle votes against it. Possible reward hacking.")
            return None
        rates = win_rates(checkpoint.project)
        own, other = rates.get(checkpoint.pk), rates.get(reference.pk)
        if own and other and own.votes >= min_votes and other.votes >= min_votes and own.rate < other.rate:
            return (f"{rose} while its human win rate fell ({other.rate:.0%} of {other.votes} battle votes for "
                    f"{reference.name} → {own.rate:.0%} of {own.votes}). Possible reward hacking.")
        return None
    return None
