"""Celery tasks: thin wrappers that take a run id and hand the job to ``run_execute``.

Heavy imports (torch, transformers) happen inside the jobs, never at import time,
so web processes that enqueue these tasks stay light.
"""
from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready

from training.runs import run_execute, runs_reap_stale


@shared_task(queue="gpu", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train_reward_model(run_id: int) -> None:
    from training.reward import reward_model_train_job

    run_execute(run_id, reward_model_train_job)


@shared_task(queue="gpu", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate(run_id: int) -> None:
    from training.generation import generation_job

    run_execute(run_id, generation_job)


TASKS = {"reward_model": train_reward_model, "generation": generate}


def task_for_kind(kind: str):
    try:
        return TASKS[kind]
    except KeyError:
        raise ValueError(f"no task runs {kind!r} runs yet") from None


@worker_ready.connect
def _reap_on_start(**_) -> None:
    # A worker that starts may be the replacement of one that crashed mid-run.
    runs_reap_stale()
