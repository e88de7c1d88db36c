"""Celery tasks: one thin task runs any kind of training run by id.

Runs are enqueued by this task's name (``training.runs.run_enqueue``), so nothing that starts a
run imports this module; the job looks its work up in ``training.jobs``.
"""
from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready

from training.jobs import job_for_kind
from training.loop import after_run
from training.models import TrainingRun
from training.runs import EXECUTE_RUN, run_execute, runs_reap_dead_here, runs_reap_stale, runs_reattach


@shared_task(name=EXECUTE_RUN, queue="gpu", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def execute_run(run_id: int) -> None:
    kind = TrainingRun.objects.values_list("kind", flat=True).get(pk=run_id)
    run = run_execute(run_id, job_for_kind(kind))
    if run is not None and run.state == TrainingRun.State.SUCCEEDED:
        after_run(run)


@worker_ready.connect
def _reap_on_start(**_) -> None:
    # A worker that starts may be the replacement of one that crashed mid-run: runs following a Ray
    # job are followed again (the job outlived the worker), the others are failed once stale.
    runs_reattach()
    runs_reap_dead_here()  # this host's runs whose process is gone fail now, not after STALE_AFTER
    runs_reap_stale()
