"""python manage.py train_reward_model --project SLUG [--sync] [--set key=value ...]

An alias of ``start_run --kind reward_model``, kept for the scripts that call it.
"""
from __future__ import annotations

from training.management.commands import start_run


class Command(start_run.Command):
    help = "Train a new reward-model version from the project's votes (same as start_run --kind reward_model)."
    kind = "reward_model"
    called_as = "train_reward_model"
