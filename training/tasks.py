"""Celery tasks: one thin task runs any kind of training run by id.

Runs are enqueued by this task's name (``training.runs.run_enqueue``), so nothing that starts a
run imports this module; the job looks its work up in ``training.jobs``.
"""
from __future__ import annotations

import logging
import threading
import time

from celery import shared_task
from celery.signals import worker_ready
from django.db import connection

from annotate import artifact_cache
from annotate.active import SELECT_PAIRS
from annotate.events import webhooks_resume
from training.jobs import job_for_kind
from training.loop import after_run
from training.models import TrainingRun
from training.runs import EXECUTE_RUN, run_execute, runs_recover
from training.selection import selection_after_run, selection_refresh

log = logging.getLogger(__name__)


@shared_task(name=EXECUTE_RUN, queue="gpu", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def execute_run(run_id: int) -> None:
    kind = TrainingRun.objects.values_list("kind", flat=True).get(pk=run_id)
    run = run_execute(run_id, job_for_kind(kind))
    if run is not None and run.state == TrainingRun.State.SUCCEEDED:
        selection_after_run(run)  # first: the refresh goes ahead of the policy run on this queue
        after_run(run)


@shared_task(name=SELECT_PAIRS, acks_late=True, ignore_result=True)
def select_pairs(project_id: int, rescore: bool = True) -> None:
    """Active selection's refresh (training.selection); its sender picks the queue: "gpu" to score with
    the reward model, "default" to re-choose from stored scores (annotate.active.selection_enqueue)."""
    try:
        selection_refresh(project_id=project_id, rescore=rescore)
    finally:
        artifact_cache.release_pins()  # the reward model it read may be pruned now


@worker_ready.connect
def _recover_on_start(**_) -> None:
    # A worker that starts may be the replacement of one that crashed mid-run: runs following a Ray job
    # are followed again (the job outlived the worker), this host's runs whose process is gone start
    # again at once, silent runs anywhere once lost. Then the same every minute, from a thread, so that
    # nothing waits for someone to open a page.
    runs_recover()
    threading.Thread(target=_recover_forever, name="runs-recover", daemon=True).start()


RECOVER_EVERY_S = 60.0


def _recover_forever(*, every_s: float | None = None, rounds: int | None = None) -> None:
    """Every ``every_s`` (``RECOVER_EVERY_S``), recover lost runs and lost webhook retries; ``rounds``
    bounds it (a test runs one)."""
    done = 0
    while rounds is None or done < rounds:
        done += 1
        time.sleep(RECOVER_EVERY_S if every_s is None else every_s)
        try:
            runs_recover()
            webhooks_resume()  # deliveries whose queued retry was lost (a broker outage, a worker's restart)
        except Exception:  # noqa: BLE001 - the database may be away for a while: try again next minute
            log.warning("recovering lost runs failed", exc_info=True)
        finally:
            connection.close()
