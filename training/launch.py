"""Runs that span several processes: a job's library entry point under torchrun, watched from the Celery task.

A reward-model or DPO run whose ``world_size`` (the run's setting, else the worker's
``WORKER_WORLD_SIZE``) is above 1 does not train in the Celery process: ``run_ranks`` starts
``torchrun`` with one process per GPU on this host (`training.lib.distributed`), and the task
stays the run's control plane. Each optimizer step rank 0 prints reaches ``RunReporter.progress``
(steps, metrics, heartbeat), every other line the log tail; a cancel stops every process of the
job; a rank that dies fails the run with torchrun's account of which rank and how. Only rank 0
writes the output, after a barrier; the caller publishes the row once the job has exited cleanly.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.conf import settings

from training.models import TrainingRun
from training.runs import RunReporter, json_safe


def run_ranks(run: TrainingRun, reporter: RunReporter, *, kind: str, config: Any, data: str | Path,
              out: str | Path, world_size: int, **extra: Any) -> dict[str, Any]:
    """Train ``config`` (a library config) on ``data`` into ``out`` with ``world_size`` processes.

    Returns rank 0's result (``out``, ``metrics``). Raises ``RunCancelled`` on a cancel and
    ``training.lib.distributed.JobFailed`` when a rank fails; either way every process is gone.
    ``extra`` (lineage, snapshot_sha256) goes to the library entry point as it is.
    """
    from training.lib.distributed import run_job

    workdir = Path(settings.ARTIFACTS_DIR) / "jobs" / f"run-{run.pk}"
    spec = {"kind": kind, "config": json_safe(asdict(config)), "data": str(data), "out": str(out), **extra}
    reporter.log(f"starting {world_size} processes with torchrun (one per GPU; gloo on a CPU)")
    try:
        return run_job(spec, world_size, workdir, on_progress=reporter.progress, on_log=reporter.log,
                       check=reporter.alive)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
