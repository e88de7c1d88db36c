"""The life of a training run: queued → running → succeeded / failed / cancelled.

Every kind of run goes through ``run_execute``: it claims the row, hands the job a
``RunReporter`` (progress, per-step metrics, log lines, cancellation), and records
the outcome. Failures land on the row with the error, and are re-raised so the
worker logs them too.

A run survives the loss of its worker process (killed, crashed, its host down): while a job runs,
a thread of its process keeps the row's heartbeat fresh, and the row names the host and process.
A lost run (its process gone from that host, found when a worker starts there or the task is
delivered again; or no heartbeat for ``RUN_LOST_AFTER_S``, found by every worker every minute, by
the console, and by a delivery of its task again, which then runs it at once) starts again from the
beginning as the next ``attempt``, up to ``RUN_MAX_ATTEMPTS``, and then fails with the reason. Each
attempt publishes under its own URL and only the process running the current attempt may write its
progress, metrics, log and heartbeat, insert the row or finish the run: a process that was presumed
lost and wakes up stops at its next report (``RunTakenOver``) and publishes nothing: one run on one
worker at a time, one artifact, one row.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from celery import signature
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from annotate import artifact_cache
from annotate.artifacts import artifact_delete, artifact_url, staging_path
from annotate.events import event_emit
from annotate.models import Project
from config.celery import app as celery_app
from training.models import RunStep, TrainingRun

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 200
# A run following a Ray job that no worker took over for this long is failed (its job may still run).
STALE_AFTER = timedelta(minutes=15)
HEARTBEAT_S = 15.0  # how often the thread of a running job's process refreshes the run's heartbeat
_RUNNING_HERE: set[int] = set()  # the runs this process is executing now (run_execute)
# A run that follows a job on a Ray cluster heartbeats every few seconds (training.ray_jobs); this long
# without one and its watcher is gone, so another worker may take the run over and follow the same job.
REATTACH_AFTER = timedelta(seconds=60)
EXECUTE_RUN = "training.tasks.execute_run"


def json_safe(value):
    """Metrics as JSON can store them: NaN and infinities (e.g. accuracy of an empty bucket) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class RunCancelled(Exception):
    """Raised inside a job at its next step once a manager asked to cancel it."""


class RunTakenOver(Exception):
    """This process's attempt of a run was presumed lost and the run started again elsewhere: it must not
    publish or finish the run."""


def output_url(run: TrainingRun) -> str:
    """Where the current attempt of ``run`` publishes its artifact: a reward model's folder, or a DPO or PPO
    checkpoint's; each attempt after the first its own (``-a2``, ...). Empty for generation runs (their
    rows are their output)."""
    suffix = f"-a{run.attempt}" if run.attempt > 1 else ""
    if run.kind == TrainingRun.Kind.REWARD_MODEL:
        return artifact_url("reward_models", run.project.slug, f"run-{run.pk}{suffix}")
    if run.kind in (TrainingRun.Kind.DPO, TrainingRun.Kind.PPO):
        return artifact_url("checkpoints", run.project.slug, f"{run.kind}-run-{run.pk}{suffix}")
    return ""


def lost_after() -> timedelta:
    return timedelta(seconds=settings.RUN_LOST_AFTER_S)


def run_assert_current(run: TrainingRun) -> None:
    """Raise ``RunTakenOver`` unless ``run``'s attempt is still the run's current one. Call it inside the
    transaction that inserts a run's output row: the row is locked until that commits, so a run cannot
    be declared lost and published by this process at once."""
    current = (TrainingRun.objects.select_for_update().filter(pk=run.pk)
               .values_list("attempt", "state").first())
    if current != (run.attempt, TrainingRun.State.RUNNING):
        raise RunTakenOver(f"run {run.pk} attempt {run.attempt} was presumed lost and the run started again "
                           f"(now attempt {current and current[0]}); this process publishes nothing")


@contextmanager
def run_publishing(run: TrainingRun, url: str = "") -> Iterator[None]:
    """The transaction that inserts a run's output rows, entered only while ``run``'s attempt is current
    (``run_assert_current``); when it is not, the artifact this attempt put at ``url`` is removed (no row
    will point at it) and ``RunTakenOver`` propagates."""
    try:
        with transaction.atomic():
            run_assert_current(run)
            yield
    except RunTakenOver:
        if url:
            artifact_delete(url)
        raise


class _Heartbeat(threading.Thread):
    """Refreshes a running run's heartbeat every ``HEARTBEAT_S`` whatever its job is doing (loading a model,
    evaluating, uploading), so that a run without a heartbeat means a process that is gone. The refresh is
    conditional on this process's attempt: once the run is no longer its own (presumed lost and started again
    elsewhere, or failed), the thread stops and sets ``taken_over``, which the job's next report raises as
    ``RunTakenOver`` (``RunReporter``): a stale attempt never keeps its successor's heartbeat fresh."""

    def __init__(self, run: TrainingRun, taken_over: threading.Event | None = None) -> None:
        super().__init__(name=f"run-{run.pk}-heartbeat", daemon=True)
        self.run_id, self.attempt, self.done = run.pk, run.attempt, threading.Event()
        self.taken_over = taken_over or threading.Event()

    def run(self) -> None:
        try:
            while not self.done.wait(HEARTBEAT_S):
                try:
                    beat = _current(self.run_id, self.attempt).update(heartbeat_at=timezone.now())
                except Exception:  # noqa: BLE001 - a database that is away for a while: try again next beat
                    log.warning("run %s: could not refresh its heartbeat", self.run_id, exc_info=True)
                    continue
                if not beat and not self.done.is_set():
                    self.taken_over.set()
                    return
        finally:
            connection.close()  # this thread's own connection

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


def _current(run_id: int, attempt: int):
    """The run's row while ``attempt`` is its current one and it runs: every write of a running attempt goes
    through this filter, so that a process presumed lost writes nothing over its successor."""
    return TrainingRun.objects.filter(pk=run_id, attempt=attempt, state=TrainingRun.State.RUNNING)


def run_create(
    *, project: Project, kind: str, config: dict | None = None, reason: str = "", enqueue: bool = True, **inputs
) -> TrainingRun:
    """Create a queued run and, once the transaction commits, send it to the ``gpu`` queue."""
    run = TrainingRun.objects.create(project=project, kind=kind, config=config or {}, reason=reason, **inputs)
    if enqueue:
        transaction.on_commit(lambda: run_enqueue(run.pk))
    _announce(run.pk)
    return run


def _announce(*run_ids: int) -> None:
    """A ``run.state_changed`` event for each run, with its state as stored now (annotate.events)."""
    fields = ("id", "project_id", "kind", "state", "attempt", "error", "checkpoint_out_id", "reward_model_out_id")
    for row in TrainingRun.objects.filter(pk__in=run_ids).values(*fields):
        event_emit(project_id=row["project_id"], type="run.state_changed", data={
            "run": row["id"], "kind": row["kind"], "state": row["state"], "attempt": row["attempt"],
            "error": row["error"][-500:], "checkpoint": row["checkpoint_out_id"],
            "reward_model": row["reward_model_out_id"]})


def run_enqueue(run_id: int) -> None:
    """Send a run to the ``gpu`` queue by the task's name: the web process needs no import of the tasks.

    With ``CELERY_TASK_ALWAYS_EAGER`` the run executes here and now, which needs the task itself:
    Celery's discovery imports the training app's task module then (once).
    """
    if celery_app.conf.task_always_eager and EXECUTE_RUN not in celery_app.tasks:
        celery_app.autodiscover_tasks(["training"], force=True)
    signature(EXECUTE_RUN, args=[run_id], app=celery_app).apply_async(queue="gpu")


class RunReporter:
    """What a job sees of its run row: progress, metrics, log lines, and cancellation.

    Every write is conditional on the reporter's attempt still being the run's current one (an
    ``UPDATE ... WHERE attempt = mine AND state = 'running'``, no extra query): a process presumed lost whose
    run started again elsewhere writes nothing more, and its next report raises ``RunTakenOver`` so the job
    stops there (``run_execute`` then records nothing of it).
    """

    def __init__(
        self, run: TrainingRun, *, min_interval_s: float = 0.5, echo: Callable[[int, int, dict], None] | None = None,
        taken_over: threading.Event | None = None,
    ) -> None:
        self.run = run
        self._echo = echo
        self._lines: list[str] = run.log_tail.splitlines()
        self._last_flush = 0.0
        self._last_heartbeat = self._last_cancel_check = time.monotonic()
        self._min_interval_s = min_interval_s
        self._last_upload_line = 0.0
        self._taken_over = taken_over or threading.Event()  # set by the heartbeat thread when it finds out first

    def _mine(self):
        if self._taken_over.is_set():
            self._lost()
        return _current(self.run.pk, self.run.attempt)

    def _lost(self):
        self._taken_over.set()
        current = TrainingRun.objects.filter(pk=self.run.pk).values_list("attempt", "state").first()
        raise RunTakenOver(
            f"run {self.run.pk} attempt {self.run.attempt} is no longer the run's current attempt (now attempt "
            f"{current and current[0]}, {current and current[1]}): this process stops at step {self.run.step}")

    def _write(self, **fields) -> None:
        if not self._mine().update(**fields):
            self._lost()

    def note(self, line: str) -> None:
        """Add ``line`` to the log tail in memory only; the run's finish writes it (``_finish``)."""
        self._lines = (self._lines + [line.rstrip()])[-LOG_TAIL_LINES:]
        self.run.log_tail = "\n".join(self._lines)

    def log(self, line: str) -> None:
        self.note(line)
        self._write(log_tail=self.run.log_tail, heartbeat_at=timezone.now())

    def alive(self) -> None:
        """For a job waiting on other processes: keep the heartbeat fresh (every 30 s) and notice a cancel
        (every 2 s) even between steps; raises RunCancelled once one was requested, RunTakenOver once the
        run is no longer this attempt's."""
        now = time.monotonic()
        if now - self._last_heartbeat >= 30.0:
            self._last_heartbeat = now
            self._write(heartbeat_at=timezone.now())
        if now - self._last_cancel_check >= 2.0:
            self._last_cancel_check = now
            cancel = self._mine().values_list("cancel_requested", flat=True).first()
            if cancel is None:
                self._lost()
            if cancel:
                raise RunCancelled(f"run {self.run.pk} was cancelled at step {self.run.step}")

    def uploading(self, sent: int, total: int) -> None:
        """Progress of publishing the output (``folder_publish``'s callback): a log line every 5 s and at
        the end, the heartbeat kept fresh, and a cancel noticed (it stops the upload)."""
        now = time.monotonic()
        if sent >= total or now - self._last_upload_line >= 5.0:
            self._last_upload_line = now
            self.log(f"uploading the output: {sent / 2**20:,.1f} of {total / 2**20:,.1f} MiB"
                     f" ({100 * sent / max(total, 1):.0f}%)")
        self.alive()

    def progress(self, step: int, total: int, metrics: dict | None = None) -> None:
        """Record step ``step`` of ``total``; raises RunCancelled when a cancel was requested, RunTakenOver
        (writing nothing) once the run is no longer this attempt's."""
        clean = {
            k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)
        }
        if self._echo:
            self._echo(step, total, clean)
        if clean and not _step_record(self.run, step, clean):
            self._lost()
        now = time.monotonic()
        if step < total and now - self._last_flush < self._min_interval_s:
            if self._taken_over.is_set():
                self._lost()
            return
        self._last_flush = now
        progress = min(1.0, step / total) if total else 0.0
        fields = {"step": step, "total_steps": total, "progress": progress, "heartbeat_at": timezone.now()}
        # One statement in the usual case: the update only matches an uncancelled run of this attempt.
        if not self._mine().filter(cancel_requested=False).update(**fields):
            self._write(**fields)  # still this attempt's (else RunTakenOver): then a cancel was requested
            self.run.step, self.run.total_steps, self.run.progress = step, total, progress
            raise RunCancelled(f"run {self.run.pk} was cancelled at step {step}")
        self.run.step, self.run.total_steps, self.run.progress = step, total, progress


def _step_record(run: TrainingRun, step: int, metrics: dict) -> bool:
    """Insert or replace the metrics of ``step``, only while ``run``'s attempt is current; False if it is not.
    One statement (an INSERT ... SELECT ... WHERE EXISTS ... ON CONFLICT) on SQLite and PostgreSQL alike."""
    steps, runs = RunStep._meta, TrainingRun._meta
    value = steps.get_field("metrics").get_db_prep_save(metrics, connection)
    created = steps.get_field("created_at").get_db_prep_save(timezone.now(), connection)
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    sql = (f"INSERT INTO {steps.db_table} (run_id, step, metrics, created_at) "
           f"SELECT %s, %s, %s{cast}, %s WHERE EXISTS (SELECT 1 FROM {runs.db_table} "
           "WHERE id = %s AND attempt = %s AND state = %s) "
           "ON CONFLICT (run_id, step) DO UPDATE SET metrics = excluded.metrics")
    with connection.cursor() as cursor:
        cursor.execute(sql, [run.pk, step, value, created, run.pk, run.attempt, TrainingRun.State.RUNNING])
        return cursor.rowcount > 0


def _claim(run_id: int) -> TrainingRun | None:
    """Move a queued run to running; None if it was cancelled or already taken."""
    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, state=TrainingRun.State.QUEUED, cancel_requested=False).update(
        state=TrainingRun.State.RUNNING, started_at=now, heartbeat_at=now, worker=socket.gethostname(),
        worker_pid=os.getpid(),
    )
    if not claimed:
        if TrainingRun.objects.filter(pk=run_id, state=TrainingRun.State.QUEUED, cancel_requested=True).update(
                state=TrainingRun.State.CANCELLED, finished_at=now):
            _announce(run_id)
        # Delivered again: the process running it died on this host, or (anywhere) it stopped heartbeating
        # for RUN_LOST_AFTER_S. Either way it is queued again as its next attempt, and this delivery runs it.
        if runs_reap_dead_here(run_id=run_id, enqueue=False) or _reap_silent(run_id=run_id, enqueue=False):
            return _claim(run_id)
        return _take_over(run_id)
    _announce(run_id)
    return TrainingRun.objects.select_related("project").get(pk=run_id)


def _take_over(run_id: int) -> TrainingRun | None:
    """A running run with a job on a Ray cluster, once its watcher stopped heartbeating; None for any other.

    The task is delivered again when the worker following the job died (acks_late), or a starting worker
    re-enqueues it (``runs_reattach``). The previous watcher may have died a moment ago, so this waits
    until its heartbeat is ``REATTACH_AFTER`` old, then takes the run with an UPDATE conditional on that
    very heartbeat: of two deliveries one wins, and a watcher still alive keeps its run.
    """
    deadline = time.monotonic() + 2 * REATTACH_AFTER.total_seconds()
    while True:
        beat = (TrainingRun.objects.filter(pk=run_id, state=TrainingRun.State.RUNNING).exclude(ray_job_id="")
                .values_list("heartbeat_at", flat=True).first())
        if beat is None:
            return None
        now = timezone.now()
        if beat < now - REATTACH_AFTER:
            taken = TrainingRun.objects.filter(pk=run_id, state=TrainingRun.State.RUNNING, heartbeat_at=beat).update(
                heartbeat_at=now, worker=socket.gethostname()
            )
            return TrainingRun.objects.select_related("project").get(pk=run_id) if taken else None
        if time.monotonic() > deadline:
            return None
        time.sleep(min(5.0, max(0.5, (beat + REATTACH_AFTER - now).total_seconds())))


def _finish(run: TrainingRun, state: str, *, error: str = "") -> bool:
    """Record how the run ended, only while ``run``'s attempt is current; False (nothing written) if not."""
    run.state, run.error, run.finished_at = state, error, timezone.now()
    if state == TrainingRun.State.SUCCEEDED:
        run.progress = 1.0
    fields = ["state", "error", "finished_at", "progress", "outputs", "reward_model_out", "checkpoint_out", "log_tail"]
    # Only the current attempt's process finishes the run (one presumed lost must not overwrite its successor).
    finished = _current(run.pk, run.attempt).update(
        **{name: getattr(run, name) for name in fields})
    if not finished:
        log.warning("run %s attempt %s ended %s after the run had started again; left as it is", run.pk,
                    run.attempt, state)
        return False
    _announce(run.pk)
    return True


def run_execute(
    run_id: int,
    job: Callable[[TrainingRun, RunReporter], None],
    *,
    echo: Callable[[int, int, dict], None] | None = None,
) -> TrainingRun | None:
    """Run ``job`` for a queued run and record how it ended. Exceptions are recorded, then re-raised.

    ``echo(step, total, metrics)`` also sees every progress report (a command line progress bar).
    """
    run = _claim(run_id)
    if run is None:
        return None
    taken_over = threading.Event()  # the heartbeat thread's finding, raised at the job's next report
    reporter = RunReporter(run, echo=echo, taken_over=taken_over)
    heartbeat = _Heartbeat(run, taken_over)
    heartbeat.start()
    _RUNNING_HERE.add(run.pk)
    try:
        job(run, reporter)
    except RunCancelled as stop:
        reporter.note(str(stop))  # written by _finish, with the outcome, only if the run is still ours
        _finish(run, TrainingRun.State.CANCELLED)
    except RunTakenOver as lost:
        log.warning("%s", lost)  # the run is its successor's now: nothing of this attempt is recorded
        return None
    except BaseException as error:
        reporter.note("".join(traceback.format_exception_only(type(error), error)).strip())
        _finish(run, TrainingRun.State.FAILED, error="".join(traceback.format_exception(error))[-8000:])
        raise
    else:
        if not _finish(run, TrainingRun.State.SUCCEEDED):
            return None  # its successor's now: nothing follows from this attempt (no after_run)
    finally:
        _RUNNING_HERE.discard(run.pk)
        heartbeat.stop()
        artifact_cache.release_pins()  # the cached inputs this run pinned may be pruned now
    return run


def run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Ask a run to stop: a queued run is cancelled now, a running one at its next step."""
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    if TrainingRun.objects.filter(pk=run.pk, state=TrainingRun.State.QUEUED).update(
            state=TrainingRun.State.CANCELLED, finished_at=timezone.now()):
        _announce(run.pk)
    run.refresh_from_db()
    return run


def runs_reap_stale(*, now=None) -> int:
    """Deal with running runs whose process stopped heartbeating; return how many.

    A local run silent for ``RUN_LOST_AFTER_S`` is lost: it starts again as its next attempt (queued
    now), or fails after the last. A run with a Ray job that no worker took over for ``STALE_AFTER`` is
    failed; its job may still be running on the cluster (nothing here talks to Ray), and the error names it.
    """
    now = now or timezone.now()
    stale = TrainingRun.objects.filter(state=TrainingRun.State.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
    abandoned = list(stale.exclude(ray_job_id="").values_list("pk", flat=True))
    handled = stale.filter(pk__in=abandoned).update(
        state=TrainingRun.State.FAILED,
        finished_at=now,
        error=Concat(Value(f"no worker followed this run's Ray job for more than {STALE_AFTER}; stop it on the "
                           "cluster if it still runs: ray job stop "), F("ray_job_id")),
    )
    _announce(*abandoned)
    return handled + _reap_silent(now=now)


def _reap_silent(*, now=None, run_id: int | None = None, enqueue: bool = True) -> int:
    """Local runs (no Ray job) without a heartbeat for ``RUN_LOST_AFTER_S``, wherever their host: each
    starts again as its next attempt (sent to the queue unless ``enqueue`` is off), or fails after the
    last. Only ``run_id`` when given. Returns how many."""
    now = now or timezone.now()
    silent = TrainingRun.objects.filter(state=TrainingRun.State.RUNNING, ray_job_id="",
                                        heartbeat_at__lt=now - lost_after()).select_related("project")
    if run_id is not None:
        silent = silent.filter(pk=run_id)
    handled = 0
    for run in silent:
        where = f" (pid {run.worker_pid} on {run.worker})" if run.worker_pid else f" ({run.worker})" if run.worker else ""
        if _lost(run, f"its worker process{where} stopped reporting for more than {lost_after()}, at step "
                      f"{run.step} of {run.total_steps}", enqueue=enqueue):
            handled += 1
    return handled


def _process_gone(pid: int, run_id: int) -> bool:
    if pid == os.getpid():
        # This very process: the run is alive if this process runs it now (a solo pool checks from a thread
        # beside it); otherwise this process started after the one that had the pid (a restarted container).
        return run_id not in _RUNNING_HERE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process holds the pid now: not a worker of ours either
        return True
    return False


def runs_reap_dead_here(*, run_id: int | None = None, enqueue: bool = True) -> list[int]:
    """Deal at once with the running runs on this host whose process is gone; return their ids.

    A worker that starts (or gets a task delivered again) on the host of a run whose process crashed,
    was killed, or went down with the host, need not wait for the heartbeat to go stale: the run starts
    again as its next attempt (sent to the queue, unless ``enqueue`` is off: the delivery at hand runs
    it), or fails after the last. Runs following a Ray job are not touched (their job outlived the
    worker: ``runs_reattach``).
    """
    host = socket.gethostname()
    running = TrainingRun.objects.filter(state=TrainingRun.State.RUNNING, worker=host, ray_job_id="",
                                         worker_pid__isnull=False)
    if run_id is not None:
        running = running.filter(pk=run_id)
    handled = []
    for run in running.select_related("project"):
        if _process_gone(run.worker_pid, run.pk) and _lost(
                run, f"the worker process running it (pid {run.worker_pid} on {host}) is gone, at step {run.step} "
                     f"of {run.total_steps}: it crashed, was killed, or its host went down", enqueue=enqueue):
            handled.append(run.pk)
    return handled


def _lost(run: TrainingRun, why: str, *, enqueue: bool = True) -> bool:
    """``run``'s current attempt is lost: remove what it half uploaded, then queue the next attempt (and send
    it, with ``enqueue``) or, after the last, fail the run. False if someone else dealt with it first."""
    _remove_partial_outputs(run)  # first: once the run reads queued or failed, nothing of it is left to find
    attempts = settings.RUN_MAX_ATTEMPTS
    current = TrainingRun.objects.filter(pk=run.pk, state=TrainingRun.State.RUNNING, attempt=run.attempt)
    if run.attempt < attempts:
        line = f"attempt {run.attempt} lost: {why}; starting again from the beginning (attempt {run.attempt + 1} of {attempts})"
        with transaction.atomic():
            moved = current.update(state=TrainingRun.State.QUEUED, attempt=run.attempt + 1, step=0, total_steps=0,
                                   progress=0.0, started_at=None, heartbeat_at=None, worker="", worker_pid=None,
                                   log_tail=Concat(F("log_tail"), Value("\n" + line)))
            if moved:
                RunStep.objects.filter(run_id=run.pk).delete()
        if moved:
            _announce(run.pk)
            log.warning("run %s: %s", run.pk, line)
            if enqueue:
                transaction.on_commit(lambda: run_enqueue(run.pk))
        return bool(moved)
    failed = current.update(
        state=TrainingRun.State.FAILED, finished_at=timezone.now(),
        error=f"{why}; nothing was published. That was attempt {run.attempt} of {attempts} (RUN_MAX_ATTEMPTS); "
              "retry the run to train again.")
    if failed:
        _announce(run.pk)
    return bool(failed)


def _remove_partial_outputs(run: TrainingRun) -> None:
    url = output_url(run)
    if not url:
        return
    try:
        staging_path(url)  # empties what the dead process was writing, when it was on this host
        artifact_delete(url)
    except Exception:  # noqa: BLE001 - a store that is down leaves an unread, manifest-less folder
        log.warning("could not remove the partial output %s of run %s", url, run.pk, exc_info=True)


def runs_recover() -> None:
    """Every recovery a worker runs when it starts and every minute after: Ray runs whose watcher is gone
    are followed again, this host's runs whose process is gone and silent runs anywhere start again."""
    runs_reattach()
    runs_reap_dead_here()
    runs_reap_stale()


def runs_reattach(*, now=None) -> list[int]:
    """Re-enqueue running runs with a Ray job whose watcher stopped heartbeating (a starting worker asks:
    it may replace one that died mid-run); the task takes each over at most once (``_take_over``)."""
    now = now or timezone.now()
    ids = list(TrainingRun.objects.filter(state=TrainingRun.State.RUNNING, heartbeat_at__lt=now - REATTACH_AFTER)
               .exclude(ray_job_id="").values_list("pk", flat=True))
    for run_id in ids:
        run_enqueue(run_id)
    return ids
