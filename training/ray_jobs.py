"""Runs on a Ray cluster: the library entry point submitted as a Ray job, followed from the Celery task.

With ``RUN_BACKEND=ray`` a worker does not train or sample in its own process: ``run_on_ray`` submits
``python -m training.lib.distributed SPEC`` (under torchrun for more than one process: "within one Ray
job, multi-GPU uses the same launcher as a GPU worker") to the cluster at ``RAY_ADDRESS`` through the
Ray Jobs API, with this repository as the job's ``working_dir`` and ``entrypoint_num_gpus`` /
``entrypoint_num_cpus`` for its processes. The Celery task stays the control plane: it polls the job,
forwards each new ``PROGRESS`` line of the job's log to ``RunReporter.progress`` and every other new
line to the log tail, keeps the run's heartbeat fresh, calls ``stop_job`` on a cancel, and fails the
run with Ray's message and the log's last error line when the job fails or is stopped by someone else.

Where the job's files go depends on ``ARTIFACTS_URL``. With an s3:// store (a cluster elsewhere) the
worker stages the spec and the data under ``jobs/run-<id>/<part>/`` in the store, the spec names the
stored folders its models come from, and the job runs ``training.remote_job``: it pulls all of it on
the node, trains, and pushes the output and then its result back there, where the worker collects
them (and removes the staging); a DPO or PPO checkpoint or a reward model the node publishes at its
final place instead (``publish_to``), so its bytes never pass through the worker. With a local folder,
the spec, the data and the output are files under ``ARTIFACTS_DIR/jobs``, read and written at the same
paths: a head on this host, or a cluster that mounts the same storage.

One run, one job per part (the training, or each checkpoint a generation run samples), never two:
the job's id is recorded on the row by a conditional UPDATE before it is submitted, and Ray refuses a
second job with an id it knows. A worker that died while following a job leaves the id behind; when
the task is delivered again, or a starting worker re-enqueues the run (``training.runs``), the job
function runs again and ``run_on_ray`` finds the id and follows the same job to its end.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from annotate import artifacts
from annotate.artifacts import model_reference
from training.models import TrainingRun
from training.runs import RunCancelled, RunReporter

# Left out of the working_dir Ray uploads (Ray also skips what .gitignore names): environments, data,
# outputs, screenshots. The cluster brings its own Python environment with the same packages.
EXCLUDES = [".venv", "venv", "var", ".git", "bench/out", "docs/screenshots", "node_modules", "**/__pycache__",
            ".pytest_cache", ".ruff_cache", "*.safetensors", "*.gguf", "*.bin"]
POLL_S = 1.0
HEARTBEAT_S = 5.0  # the watcher's heartbeat; training.runs.REATTACH_AFTER is many of these
STOP_WAIT_S = 60.0
UNREACHABLE_S = 120.0  # how long the dashboard may not answer before the run fails (the job is then stopped)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def on_ray(run: TrainingRun) -> bool:
    """Whether ``run``'s work goes to the Ray cluster: the worker says so, or the run already has a job there
    (a worker set to run locally must not start a second copy of a job it re-attaches to)."""
    return settings.RUN_BACKEND == "ray" or bool(run.ray_job_id)


def client():
    from ray.job_submission import JobSubmissionClient

    # Packaging the working_dir logs every file it leaves out, at INFO and WARNING: not the worker's news.
    for name in ("ray._private.runtime_env", "ray.dashboard.modules.dashboard_sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return JobSubmissionClient(settings.RAY_ADDRESS)


def entrypoint(world_size: int, spec_path: str | Path) -> str:
    """The job's command: the library entry point, under torchrun for more than one process."""
    from training.lib.distributed import launch_command

    if world_size == 1:
        return shlex.join(["python", "-m", "training.lib.distributed", str(spec_path)])
    return shlex.join(launch_command(world_size, spec_path, python="python"))


def through_store() -> bool:
    """Whether jobs exchange their files with the cluster through the artifact store (an s3:// ARTIFACTS_URL)."""
    return not artifacts.is_local(artifacts.base_url())


def runtime_env() -> dict[str, Any]:
    threads = str(settings.RAY_CPUS_PER_PROCESS)
    env_vars = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "TOKENIZERS_PARALLELISM": "false"}
    if through_store():
        # Where the store is; its keys only when this worker has them set (they then show in the job's
        # runtime environment on the dashboard): otherwise the nodes' own credential chain.
        env_vars.update(ARTIFACTS_URL=settings.ARTIFACTS_URL, S3_ENDPOINT_URL=settings.S3_ENDPOINT_URL,
                        S3_REGION=settings.S3_REGION)
        if settings.AWS_ACCESS_KEY_ID:
            env_vars.update(AWS_ACCESS_KEY_ID=settings.AWS_ACCESS_KEY_ID,
                            AWS_SECRET_ACCESS_KEY=settings.AWS_SECRET_ACCESS_KEY)
    return {"working_dir": str(settings.BASE_DIR), "excludes": EXCLUDES, "env_vars": env_vars}


def staged_url(run: TrainingRun, part: str, name: str = "") -> str:
    """Where a run's job for ``part`` exchanges its files in the store (``jobs/run-<id>/<part>/<name>``)."""
    return artifacts.artifact_url("jobs", f"run-{run.pk}", part, *([name] if name else []))


def stage(run: TrainingRun, spec: dict[str, Any], part: str, publish_to: str = "") -> str:
    """Put what the job needs in the store: a copy of its data file (with its sha256) and its spec, which
    names the stored folders its models come from and where its output and result go; the spec's URL.

    The output goes to ``publish_to`` where given (the folder's final place: the node publishes it there,
    manifest last, and the worker never handles its bytes), else beside the spec for the worker to collect."""
    data = Path(spec["data"])
    models = {key: url for key, value in spec["config"].items()
              if isinstance(value, str) and (url := artifacts.fetched_from(value) or _stored_url(value))}
    data_url = staged_url(run, part, f"data{data.suffix}")
    store = {"data": {"url": data_url, "sha256": artifacts.file_upload(data, data_url)}, "models": models,
             "out": publish_to or staged_url(run, part, "out"), "result": staged_url(run, part, "result.json")}
    spec_url = staged_url(run, part, "spec.json")
    artifacts.blob_write(spec_url, json.dumps({**spec, "store": store}).encode())
    return spec_url


def _stored_url(value: str) -> str | None:
    """``value`` when it is a stored folder's s3:// URL (`artifacts.model_reference`), else None."""
    return value if value.startswith("s3://") else None


def collect(run: TrainingRun, part: str, out: Path | None) -> dict[str, Any]:
    """The job's result from the store, and its output moved to ``out`` (a folder, verified through its
    manifest, or a file, checked by size); ``JobFailed`` when the result is not there.

    A job whose spec sent its output to its final place (``run_on_ray``'s ``publish_to``, read back from
    the staged spec, so a worker that re-attached after the run's attempt changed finds it too) leaves
    it there: ``result["published"]`` is its URL, checked to hold a complete folder (its manifest)."""
    from training.lib.distributed import JobFailed

    try:
        result = json.loads(artifacts.blob_read(staged_url(run, part, "result.json")))
    except FileNotFoundError:
        raise JobFailed(f"run {run.pk}'s Ray job for {part} succeeded but left no result in the store "
                        f"({staged_url(run, part)}); nothing was published") from None
    if destination := _published_at(run, part):
        if not artifacts.has_manifest(destination):
            raise JobFailed(f"run {run.pk}'s Ray job for {part} succeeded but its output at {destination} is "
                            "incomplete (no manifest); nothing was published")
        result["published"] = destination
        return result
    if out is not None:
        if out.is_dir():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        stored = staged_url(run, part, "out")
        if artifacts.has_manifest(stored):
            fetched = artifacts.folder_fetch(stored)
            shutil.move(fetched, out)
            shutil.rmtree(fetched.parent, ignore_errors=True)  # the cache entry it leaves: its stamp alone
        else:
            out.write_bytes(artifacts.blob_read(stored))  # a generation run's JSONL
        result["out"] = str(out)
    return result


def run_on_ray(run: TrainingRun, reporter: RunReporter, spec: dict[str, Any], *, world_size: int, part: str,
               workdir: Path, out: Path | None = None, publish_to: str = "",
               on_progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run ``spec`` (kind, config, data; its output goes to ``workdir/out``) as the run's Ray job for ``part``,
    or follow the one already submitted for it, and return the job's result once it succeeded.

    The output is moved to ``out`` when given (and ``result["out"]`` says so). Through the store, a
    folder bound for a stored URL can instead be published there by the node itself (``publish_to``:
    one crossing of the network instead of three, node to store, store to worker, worker to store):
    then ``result["published"]`` is its URL, and a job that did not succeed leaves nothing there.
    Raises ``RunCancelled`` once the job was stopped for a cancel, ``JobFailed`` when it failed;
    ``workdir`` is removed once the job ended either way (it stays while the job may still run, for
    the worker that re-attaches).
    """
    from training.lib.distributed import JobFailed  # the library imports torch: not at import (web processes)

    ray = client()
    publish_to = publish_to if through_store() else ""  # a local store: the output is renamed into place
    job_id, attached = _job_id(run, reporter, ray, spec, world_size=world_size, part=part, workdir=workdir,
                               publish_to=publish_to)
    succeeded = False
    try:
        status = _follow(run, reporter, ray, job_id, on_progress or reporter.progress, attached=attached)
        if status == "STOPPED" and TrainingRun.objects.filter(pk=run.pk, cancel_requested=True).exists():
            raise RunCancelled(f"run {run.pk} was cancelled; Ray job {job_id} stopped")  # by a previous watcher
        if status != "SUCCEEDED":
            raise JobFailed(_failure(ray, job_id, status, world_size))
        if through_store():
            result = collect(run, part, out)
            succeeded = True
            return result
        result_path = workdir / "result.json"
        if not result_path.exists():
            raise JobFailed(f"Ray job {job_id} succeeded but its result is gone ({result_path}); a worker that "
                            "died after taking it may have left the run unpublished: start the run again")
        result = json.loads(result_path.read_text())
        if out is not None:
            if out.is_dir():
                shutil.rmtree(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            (workdir / "out").replace(out)
            result["out"] = str(out)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if through_store():
            if not succeeded and (destination := _published_at(run, part)):
                artifacts.artifact_delete(destination)  # what a failed or stopped job's node sent there
            artifacts.artifact_delete(staged_url(run, part))


def _published_at(run: TrainingRun, part: str) -> str:
    """The final place the staged spec of the run's job for ``part`` sends its output to (``publish_to``),
    or "" when it goes beside the spec (or the spec is gone)."""
    try:
        destination = json.loads(artifacts.blob_read(staged_url(run, part, "spec.json")))["store"]["out"]
    except (FileNotFoundError, KeyError, ValueError):
        return ""
    return "" if destination == staged_url(run, part, "out") else destination


def generate_on_ray(run: TrainingRun, reporter: RunReporter, *, checkpoint, prompts: list, sampling: dict[str, Any],
                    progress: Callable[[int, int], None]) -> list:
    """Sample ``checkpoint``'s weights on ``prompts`` (Prompt rows) in a one-process Ray job; the completions
    in prompt order, as ``generate_local`` returns them. Device and dtype are "auto": the cluster's node decides."""
    from training.lib.generation import GeneratedText, GenerationConfig

    config = GenerationConfig(model=model_reference(checkpoint.uri), **sampling)  # a stored one: pulled by the node
    part = f"generation-c{checkpoint.pk}"
    jobs = Path(settings.ARTIFACTS_DIR) / "jobs" / f"run-{run.pk}"
    workdir, out = jobs / part, jobs / f"{part}.jsonl"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prompts.json").write_text(json.dumps([p.messages for p in prompts]))
    reporter.log(f"{checkpoint.name}: sampling {len(prompts)} prompts on the Ray cluster")
    spec = {"kind": "generation", "config": asdict(config), "data": str(workdir / "prompts.json")}
    run_on_ray(run, reporter, spec, world_size=1, part=part, workdir=workdir, out=out,
               on_progress=lambda step, total, _: progress(step, total))
    try:
        return [GeneratedText(**json.loads(line)) for line in out.read_text().splitlines() if line.strip()]
    finally:
        out.unlink(missing_ok=True)


def measure_on_ray(run: TrainingRun, reporter: RunReporter, plan: dict, paths: dict[str, str]) -> dict:
    """The reward-hacking guard's figures (`training.lib.guard.measure`) from a one-process Ray job: the
    reward model and the policies are read on the cluster's node, never on this worker."""
    if not paths:  # no reward model yet and no KL to estimate: nothing to read
        return {"proxies": {}, "kl": {}}
    part = "guard"
    workdir = Path(settings.ARTIFACTS_DIR) / "jobs" / f"run-{run.pk}" / part
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "plan.json").write_text(json.dumps(plan))
    reporter.log("guard: measuring on the Ray cluster")
    spec = {"kind": "guard", "config": {**paths, "device": "auto"}, "data": str(workdir / "plan.json")}
    return run_on_ray(run, reporter, spec, world_size=1, part=part, workdir=workdir,
                      on_progress=lambda *_: None)


def _job_id(run: TrainingRun, reporter: RunReporter, ray, spec: dict[str, Any], *, world_size: int, part: str,
            workdir: Path, publish_to: str) -> tuple[str, bool]:
    """(id, whether a worker submitted it before) of the run's job for ``part``: the one on the row when a
    worker submitted it before, else a new one, recorded first (a conditional UPDATE, so one worker wins)
    and then submitted."""
    from training.lib.distributed import JobFailed

    prefix = f"flywheel-run-{run.pk}-{part}-"
    current = TrainingRun.objects.values_list("ray_job_id", flat=True).get(pk=run.pk)
    if current.startswith(prefix):
        if _known(ray, current):
            reporter.log(f"following Ray job {current} again (its previous watcher stopped)")
            return current, True
        reporter.log(f"Ray job {current} was recorded but never reached the cluster: submitting it now")
        _submit(ray, current, spec, world_size=world_size, workdir=workdir, run=run, part=part,
                publish_to=publish_to)
        return current, False
    job_id = prefix + uuid.uuid4().hex[:8]
    if not TrainingRun.objects.filter(pk=run.pk, ray_job_id=current).update(ray_job_id=job_id):
        raise JobFailed(f"another worker took run {run.pk}'s Ray job over; this one stops following it")
    run.ray_job_id = job_id
    _submit(ray, job_id, spec, world_size=world_size, workdir=workdir, run=run, part=part, publish_to=publish_to)
    reporter.log(f"submitted Ray job {job_id} to {settings.RAY_ADDRESS} ({world_size} process"
                 f"{'es' if world_size > 1 else ''}, {world_size * settings.RAY_GPUS_PER_PROCESS} GPUs)")
    return job_id, False


def _submit(ray, job_id: str, spec: dict[str, Any], *, world_size: int, workdir: Path, run: TrainingRun,
            part: str, publish_to: str) -> None:
    if through_store():
        artifacts.artifact_delete(staged_url(run, part))  # an earlier attempt's files
        command = shlex.join(["python", "-m", "training.remote_job", str(world_size),
                              stage(run, spec, part, publish_to)])
    else:
        shutil.rmtree(workdir / "out", ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
        spec = {**spec, "out": str(workdir / "out"), "result": str(workdir / "result.json")}
        (workdir / "result.json").unlink(missing_ok=True)
        (workdir / "spec.json").write_text(json.dumps(spec))
        command = entrypoint(world_size, workdir / "spec.json")
    ray.submit_job(
        entrypoint=command,
        submission_id=job_id,
        runtime_env=runtime_env(),
        entrypoint_num_gpus=world_size * settings.RAY_GPUS_PER_PROCESS,
        entrypoint_num_cpus=world_size * settings.RAY_CPUS_PER_PROCESS,
        metadata={"flywheel_run": str(run.pk), "project": run.project.slug, "kind": str(spec["kind"])},
    )


def _known(ray, job_id: str) -> bool:
    try:
        ray.get_job_info(job_id)
    except RuntimeError as error:
        if "does not exist" in str(error):
            return False
        raise
    return True


def _follow(run: TrainingRun, reporter: RunReporter, ray, job_id: str,
            on_progress: Callable[[int, int, dict[str, float]], None], *, attached: bool) -> str:
    """Poll the job until it ends, forwarding new log lines; return its final status.

    A cancel (``RunCancelled`` from the reporter) stops the job, waits until Ray says it ended, and
    propagates. Any other error stops the job too: nobody would publish what it made. A watcher that
    ``attached`` to a job its predecessor followed replays the progress lines (recording a step twice is
    harmless) but not the log lines its predecessor already put in the tail.
    """
    from training.lib.distributed import PROGRESS_PREFIX, JobFailed

    seen, last_status = 0, ""
    skip = _forwarded(reporter.run.log_tail, ray.get_job_logs(job_id).splitlines()) if attached else 0
    last_beat = time.monotonic()
    unreachable_since: float | None = None
    try:
        while True:
            try:
                status = str(ray.get_job_status(job_id).value)
                lines = ray.get_job_logs(job_id).splitlines()
                unreachable_since = None
            except (ConnectionError, OSError) as error:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_S:
                    raise JobFailed(f"the Ray dashboard at {settings.RAY_ADDRESS} did not answer for "
                                    f"{UNREACHABLE_S:.0f} s: {error}") from error
                reporter.alive()
                time.sleep(POLL_S)
                continue
            for index, line in enumerate(lines[seen:], start=seen):
                if line.startswith(PROGRESS_PREFIX):
                    event = json.loads(line[len(PROGRESS_PREFIX):])
                    on_progress(event["step"], event["total"], event["metrics"])
                elif index >= skip:
                    reporter.log(line)
            seen = len(lines)
            if status != last_status and status not in TERMINAL:  # PENDING: waiting for the cluster's resources
                reporter.log(f"Ray job {job_id} is {status}")
                last_status = status
            if status in TERMINAL:
                return status
            if time.monotonic() - last_beat >= HEARTBEAT_S:
                last_beat = time.monotonic()
                TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
            reporter.alive()
            time.sleep(POLL_S)
    except BaseException as error:
        _stop(ray, job_id, reporter, why="cancelled" if isinstance(error, RunCancelled) else "its watcher failed")
        raise


def _forwarded(tail: str, lines: list[str]) -> int:
    """How many of the job's log ``lines`` a previous watcher forwarded: up to the last one in the run's tail."""
    from training.lib.distributed import PROGRESS_PREFIX

    logged = {line.rstrip() for line in tail.splitlines()}
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index].rstrip()
        if line and line in logged and not line.startswith(PROGRESS_PREFIX):
            return index + 1
    return 0


def _stop(ray, job_id: str, reporter: RunReporter, *, why: str) -> None:
    """Stop the job and wait (a bounded while) until Ray reports it ended."""
    try:
        ray.stop_job(job_id)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            status = str(ray.get_job_status(job_id).value)
            if status in TERMINAL:
                reporter.log(f"Ray job {job_id} {status.lower()} ({why})")
                return
            time.sleep(POLL_S)
        reporter.log(f"Ray job {job_id} was asked to stop ({why}) and had not ended after {STOP_WAIT_S:.0f} s")
    except Exception as error:  # the run's own outcome is the error being raised; this only adds a line
        reporter.log(f"could not stop Ray job {job_id}: {error}")


_ERROR_LINE = re.compile(r"(\[rank\d+\]:\s*)?[A-Za-z_.]*(Error|Exception|Failed|Exit)\b")


def _failure(ray, job_id: str, status: str, world_size: int) -> str:
    """One sentence: what Ray says about the job, and the last error line of its log."""
    info = ray.get_job_info(job_id)
    message = (info.message or "").split("last available logs", 1)[0].strip().rstrip(",").strip()
    lines = ray.get_job_logs(job_id).splitlines()
    errors = [line.strip() for line in lines if _ERROR_LINE.match(line.strip()) and "ChildFailedError" not in line]
    how = "was stopped outside the flywheel (ray job stop, or the cluster)" if status == "STOPPED" else "failed"
    text = f"Ray job {job_id} {how}"
    if message:
        text += f": {message}"
    if errors:
        text += f"; last error: {errors[-1]}"
    return text + "; nothing was published"
