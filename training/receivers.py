"""Reactions to the annotate app's signals (connected in TrainingConfig.ready)."""
from __future__ import annotations

from training.loop import retrain_if_due


def on_votes_recorded(sender, *, project_id: int, **_) -> None:
    retrain_if_due(project_id=project_id)
