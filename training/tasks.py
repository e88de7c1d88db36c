"""Celery tasks: one thin task runs any kind of training run by id.

Jobs are imported by dotted path when a run starts, so the heavy imports (torch,
transformers) happen in the worker, never in web processes that enqueue runs.
"""
from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready
from django.utils.module_loading import import_string

from training.runs import run_execute, runs_reap_stale

JOBS = {
    "reward_model": "training.reward.reward_model_train_job",
    "generation": "training.generation.generation_job",
    "dpo": "training.policy.dpo_job",
    "ppo": "training.policy.ppo_job",
}


def job_for_kind(kind: str):
    try:
        return import_string(JOBS[kind])
    except KeyError:
        raise ValueError(f"no job runs {kind!r} runs") from None


@shared_task(queue="gpu", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def execute_run(run_id: int) -> None:
    from training.loop import after_run
    from training.models import TrainingRun

    kind = TrainingRun.objects.values_list("kind", flat=True).get(pk=run_id)
    run = run_execute(run_id, job_for_kind(kind))
    if run is not None and run.state == TrainingRun.State.SUCCEEDED:
        after_run(run)


@worker_ready.connect
def _reap_on_start(**_) -> None:
    # A worker that starts may be the replacement of one that crashed mid-run.
    runs_reap_stale()
