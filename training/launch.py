"""Runs that span several processes: a job's library entry point under torchrun, watched from the Celery task.

A reward-model or DPO run whose ``world_size`` (the run's setting, else the worker's
``WORKER_WORLD_SIZE``) is above 1 does not train in the Celery process: ``run_ranks`` starts
``torchrun`` with one process per GPU on this host (`training.lib.distributed`), and the task
stays the run's control plane. Each optimizer step rank 0 prints reaches ``RunReporter.progress``
(steps, metrics, heartbeat), every other line the log tail; a cancel stops every process of the
job; a rank that dies fails the run with torchrun's account of which rank and how. Only rank 0
writes the output, after a barrier; the caller publishes the row once the job has exited cleanly.

With ``RUN_BACKEND=ray`` the same spec goes to a Ray cluster instead, at any world size
(``training.ray_jobs``); ``out_of_process`` is the one question the job functions ask.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.conf import settings

from training.models import TrainingRun
from training.ray_jobs import on_ray, run_on_ray
from training.runs import RunReporter, json_safe


def out_of_process(run: TrainingRun, world_size: int) -> bool:
    """Whether a training job leaves the Celery process: for a Ray cluster (``training.ray_jobs.on_ray``),
    or for torchrun here when it needs more than one process. Then the job function calls ``run_ranks``."""
    return world_size > 1 or on_ray(run)


def run_ranks(run: TrainingRun, reporter: RunReporter, *, kind: str, config: Any, data: str | Path,
              out: str | Path, world_size: int, publish_to: str = "", **extra: Any) -> dict[str, Any]:
    """Train ``config`` (a library config) on ``data`` into ``out`` with ``world_size`` processes.

    Returns rank 0's result (``out``, ``metrics``). Raises ``RunCancelled`` on a cancel and
    ``training.lib.distributed.JobFailed`` when a rank fails; either way every process is gone.
    ``extra`` (lineage, snapshot_sha256) goes to the library entry point as it is. ``publish_to``: the
    stored URL the output is bound for; a Ray job through the store publishes it there from its node
    (``training.ray_jobs.run_on_ray``; then ``result["published"]`` is that URL and ``out`` stays empty).
    """
    from training.lib.distributed import run_job

    workdir = Path(settings.ARTIFACTS_DIR) / "jobs" / f"run-{run.pk}"
    spec = {"kind": kind, "config": json_safe(asdict(config)), "data": str(data), "out": str(out), **extra}
    if on_ray(run):
        return run_on_ray(run, reporter, spec, world_size=world_size, part=kind, workdir=workdir, out=Path(out),
                          publish_to=publish_to)
    reporter.log(f"starting {world_size} processes with torchrun (one per GPU; gloo on a CPU)")
    try:
        return run_job(spec, world_size, workdir, on_progress=reporter.progress, on_log=reporter.log,
                       check=reporter.alive)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
