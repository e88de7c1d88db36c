"""Never one run on two workers at once: a process presumed lost (its heartbeat stale, yet alive) stops at
its next report and writes nothing over its successor; a task delivered again for a silent run takes it
over at once as its next attempt; the periodic check reaps silent runs by itself."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from training import runs, tasks
from training.models import RunStep, TrainingRun
from training.reward import reward_model_start
from training.runs import RunReporter, RunTakenOver, run_execute

pytestmark = pytest.mark.timeout(120)


def _silent(run: TrainingRun, settings, **fields) -> None:
    """``run`` is running elsewhere and has not heartbeaten for longer than RUN_LOST_AFTER_S."""
    stale = timezone.now() - timedelta(seconds=settings.RUN_LOST_AFTER_S + 5)
    TrainingRun.objects.filter(pk=run.pk).update(
        **{"state": TrainingRun.State.RUNNING, "started_at": stale, "heartbeat_at": stale, "step": 2,
           "total_steps": 10, "worker": "gpu-host-2", "worker_pid": 4242, **fields})


def test_a_presumed_lost_process_stops_at_its_next_report_and_writes_nothing(project, settings, monkeypatch):
    monkeypatch.setattr(runs, "run_enqueue", lambda run_id: None)
    run = reward_model_start(project=project, enqueue=False)
    old = runs._claim(run.pk)
    first = RunReporter(old, min_interval_s=0)
    first.progress(1, 10, {"loss": 9.0})
    first.log("old: step 1")
    # Its heartbeat goes stale (a long pause, a partition): the reaper starts the run again; a worker claims it.
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert runs.runs_reap_stale() == 1
    new = runs._claim(run.pk)
    assert new.attempt == 2
    second = RunReporter(new, min_interval_s=0)
    second.progress(1, 4, {"loss": 0.5})
    second.log("new: step 1")
    beat = TrainingRun.objects.values_list("heartbeat_at", flat=True).get(pk=run.pk)

    # The old process wakes up: each of its writes raises, and nothing of it lands.
    with pytest.raises(RunTakenOver, match="attempt 1 is no longer the run's current attempt"):
        first.progress(2, 10, {"loss": 8.0})
    with pytest.raises(RunTakenOver):
        first.log("old: step 2")
    first._last_heartbeat = first._last_cancel_check = 0.0  # as if 30 s had passed
    with pytest.raises(RunTakenOver):
        first.alive()

    row = TrainingRun.objects.get(pk=run.pk)
    assert (row.attempt, row.state, row.step, row.total_steps, row.progress) == (2, TrainingRun.State.RUNNING, 1, 4, 0.25)
    assert row.heartbeat_at == beat
    assert "new: step 1" in row.log_tail and "old: step 2" not in row.log_tail
    assert list(RunStep.objects.filter(run=run).values_list("step", "metrics")) == [(1, {"loss": 0.5})]
    second.progress(2, 4, {"loss": 0.4})  # the current attempt carries on
    assert list(RunStep.objects.filter(run=run).values_list("step", flat=True)) == [1, 2]


def test_a_run_failed_by_the_reaper_is_not_written_by_its_late_process(project, settings):
    run = reward_model_start(project=project, enqueue=False)
    reporter = RunReporter(runs._claim(run.pk), min_interval_s=0)
    TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.FAILED, error="lost after 3 attempts")
    with pytest.raises(RunTakenOver):
        reporter.progress(5, 10, {"loss": 1.0})
    row = TrainingRun.objects.get(pk=run.pk)
    assert (row.state, row.step, row.error) == (TrainingRun.State.FAILED, 0, "lost after 3 attempts")
    assert not RunStep.objects.filter(run=run).exists()


@pytest.mark.django_db(transaction=True)
def test_two_workers_on_one_run_the_old_one_stops_and_its_successor_finishes(project, monkeypatch):
    """Two executions of one run: the first is presumed lost mid-job (while it is busy and reports
    nothing), a second claims the next attempt; the first's heartbeat thread notices, stops beating, and
    the first job stops at its very next report (throttled or not) without a query or a write."""
    monkeypatch.setattr(runs, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(runs, "run_enqueue", lambda run_id: None)
    run = reward_model_start(project=project, enqueue=False)
    old_steps_after_takeover: list[int] = []
    taken, resumed = threading.Event(), threading.Event()

    def old_job(run, reporter):
        reporter.progress(1, 100, {"loss": 9.0})
        taken.wait(10)  # busy: loading a model, a long step
        time.sleep(0.3)  # a few heartbeats: the thread finds the run is no longer this attempt's
        resumed.set()
        for step in range(2, 100):
            reporter.progress(step, 100, {"loss": 9.0})  # within min_interval_s: no flush, still stops
            old_steps_after_takeover.append(step)

    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(run_execute(run.pk, old_job)))
    worker.start()
    deadline = time.monotonic() + 10
    while TrainingRun.objects.get(pk=run.pk).step < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert runs.runs_reap_stale() == 1

    def new_job(run, reporter):
        taken.set()
        resumed.wait(10)
        for step in range(1, 5):
            reporter.progress(step, 4, {"loss": 1.0 / step})

    done = run_execute(run.pk, new_job)
    worker.join(10)
    assert outcome == [None] and old_steps_after_takeover == []
    assert done.state == TrainingRun.State.SUCCEEDED and done.attempt == 2
    row = TrainingRun.objects.get(pk=run.pk)
    assert (row.state, row.attempt, row.step, row.total_steps) == (TrainingRun.State.SUCCEEDED, 2, 4, 4)
    assert list(RunStep.objects.filter(run=run).values_list("step", flat=True)) == [1, 2, 3, 4]
    assert RunStep.objects.get(run=run, step=1).metrics == {"loss": 1.0}


def test_a_redelivered_task_for_a_silent_run_on_another_host_takes_it_over_at_once(project, settings, monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr(runs, "run_enqueue", sent.append)
    run = reward_model_start(project=project, enqueue=False)
    _silent(run, settings)
    ran: list[int] = []
    begun = time.monotonic()
    done = run_execute(run.pk, lambda run, reporter: ran.append(run.attempt))
    assert time.monotonic() - begun < 5  # at once: no waiting for a periodic check
    assert ran == [2] and sent == []  # this delivery runs the next attempt; nothing else is queued
    row = TrainingRun.objects.get(pk=run.pk)
    assert (row.state, row.attempt) == (TrainingRun.State.SUCCEEDED, 2) and done.attempt == 2
    assert "attempt 1 lost: its worker process (pid 4242 on gpu-host-2) stopped reporting" in row.log_tail


def test_a_redelivered_task_leaves_a_run_that_still_heartbeats_elsewhere(project, settings):
    run = reward_model_start(project=project, enqueue=False)
    _silent(run, settings, heartbeat_at=timezone.now())
    assert run_execute(run.pk, lambda run, reporter: pytest.fail("ran twice")) is None
    row = TrainingRun.objects.get(pk=run.pk)
    assert (row.state, row.attempt, row.worker) == (TrainingRun.State.RUNNING, 1, "gpu-host-2")


@pytest.mark.django_db(transaction=True)
def test_the_periodic_check_reaps_a_silent_run_and_the_loop_goes_on_after_its_next_attempt(
        project, settings, monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr(runs, "run_enqueue", sent.append)
    run = reward_model_start(project=project, enqueue=False)
    _silent(run, settings)
    tasks._recover_forever(every_s=0.01, rounds=1)  # one round of the worker's every-minute thread
    row = TrainingRun.objects.get(pk=run.pk)
    assert (row.state, row.attempt) == (TrainingRun.State.QUEUED, 2) and sent == [run.pk]

    followed: list[tuple[int, str]] = []
    monkeypatch.setattr(tasks, "job_for_kind", lambda kind: lambda run, reporter: reporter.progress(1, 1))
    monkeypatch.setattr(tasks, "after_run", lambda run: followed.append((run.attempt, run.state)))
    tasks.execute_run(run.pk)  # the delivery of what the check sent
    assert followed == [(2, TrainingRun.State.SUCCEEDED)]
