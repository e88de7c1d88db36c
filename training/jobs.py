"""The job registry: which function runs each kind of run.

A job takes the run's row and a ``RunReporter``, does the work, and leaves its outputs on the
row (``training.runs.run_execute`` records how it ended). The job modules import torch and the
libraries inside the job functions, so importing this registry stays cheap.
"""
from __future__ import annotations

from collections.abc import Callable

from training.generation import generation_job
from training.models import TrainingRun
from training.policy import dpo_job, ppo_job
from training.reward import reward_model_train_job
from training.runs import RunReporter

Job = Callable[[TrainingRun, RunReporter], None]

JOBS: dict[str, Job] = {
    TrainingRun.Kind.REWARD_MODEL: reward_model_train_job,
    TrainingRun.Kind.DPO: dpo_job,
    TrainingRun.Kind.PPO: ppo_job,
    TrainingRun.Kind.GENERATION: generation_job,
}


def job_for_kind(kind: str) -> Job:
    try:
        return JOBS[kind]
    except KeyError:
        raise ValueError(f"no job runs {kind!r} runs") from None

