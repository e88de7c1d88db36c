"""The reward-hacking panel's reads: each checkpoint's guard metrics, human win rate and flag; each reward
model's accuracy on the canary set."""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from annotate.canary import canary_counts
from annotate.models import Checkpoint, Project, Prompt
from rewardmodel.models import RewardModel
from training import guards


@dataclass(frozen=True)
class CheckpointGuard:
    checkpoint: Checkpoint
    proxy_reward: float | None
    kl_from_base: float | None
    base_name: str | None
    reward_model_version: int | None
    samples: int
    win_rate: float | None  # against every opponent in battles (ties half)
    votes: int
    flag: str | None


@dataclass(frozen=True)
class GuardPanel:
    checkpoints: list[CheckpointGuard]  # newest first
    reward_models: list[RewardModel]  # newest first
    canaries: dict[str, int]
    prompts: int  # the fixed prompt set's size

    @property
    def flagged(self) -> list[CheckpointGuard]:
        return [row for row in self.checkpoints if row.flag]


def guard_panel(project: Project) -> GuardPanel:
    """Every checkpoint with guard metrics or battle votes (a flag for each measured one: a few queries each),
    and every reward model with its canary accuracy."""
    counts = guards.battle_counts_of(project)
    rates = guards.win_rates(project, counts=counts)
    rows = []
    for checkpoint in (Checkpoint.objects.filter(project=project).select_related("parent", "project")
                       .newest_first()):
        guard = (checkpoint.meta or {}).get("guard") or {}
        rate = rates.get(checkpoint.pk)
        if not guard and rate is None:
            continue
        rows.append(CheckpointGuard(
            checkpoint=checkpoint, proxy_reward=guard.get("proxy_reward"), kl_from_base=guard.get("kl_from_base"),
            base_name=guard.get("base_name"), reward_model_version=guard.get("reward_model_version"),
            samples=guard.get("samples", 0), win_rate=rate.rate if rate else None, votes=rate.votes if rate else 0,
            flag=guards.checkpoint_flag(checkpoint, counts=counts) if guard else None,
        ))
    models = list(RewardModel.objects.filter(project=project).order_by("-version"))
    prompts = min(settings.GUARD_PROMPTS, Prompt.objects.filter(project=project).count())  # the fixed set's size
    return GuardPanel(rows, models, canary_counts(project), prompts)
