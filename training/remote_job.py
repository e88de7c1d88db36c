"""A job on a cluster that shares no disk with the worker: its files come and go through the artifact store.

    python -m training.remote_job WORLD_SIZE s3://bucket/prefix/jobs/run-7/dpo/spec.json

What a Ray job runs when ``ARTIFACTS_URL`` is an s3:// store (``training.ray_jobs``). The worker
staged the job under ``jobs/run-<id>/<part>/`` in the store: ``spec.json`` and the data file, and
the spec names the stored folders its models come from. Here, on the cluster's node:

1. the spec is read from the store, the data file is downloaded and checked against its sha256,
   and each model folder is pulled through its manifest into this node's cache
   (``ARTIFACTS_CACHE_DIR``, else ``$TMPDIR/flywheel-artifacts``), as a GPU worker pulls them;
2. the library entry point runs on the local copies, as ``training.lib.distributed`` (under
   torchrun for more than one process), its output and ``PROGRESS`` lines on this job's log;
3. once it exited cleanly, the output goes to the store (a folder: every file, manifest last,
   verified; a file: uploaded and its size checked), and then ``result.json``, last: a result in
   the store means the output beside it is whole. The worker collects both.

The store's settings come from the job's environment (``ARTIFACTS_URL``, ``S3_ENDPOINT_URL``,
``S3_REGION``; keys from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or the node's own
credential chain). This module configures Django's settings with only those; it touches no
database.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from django.conf import settings

from annotate.artifacts import blob_read, blob_write, file_fetch, file_upload, folder_fetch, folder_publish
from training.lib.distributed import launch_command

SCRATCH = Path("flywheel-job")  # in the job's working directory


def configure() -> None:
    """Django settings holding only what ``annotate.artifacts`` reads, from the environment."""
    if settings.configured:
        return
    cache = os.environ.get("ARTIFACTS_CACHE_DIR") or str(Path(tempfile.gettempdir()) / "flywheel-artifacts")
    settings.configure(
        ARTIFACTS_URL=os.environ.get("ARTIFACTS_URL", ""), ARTIFACTS_DIR=str(SCRATCH.absolute()),
        ARTIFACTS_CACHE_DIR=cache, ARTIFACTS_CACHE_MAX_GB=float(os.environ.get("ARTIFACTS_CACHE_MAX_GB") or 100.0),
        S3_ENDPOINT_URL=os.environ.get("S3_ENDPOINT_URL", ""),
        S3_REGION=os.environ.get("S3_REGION") or os.environ.get("AWS_DEFAULT_REGION", ""),
        AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", ""),
        AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    )


def pull(spec: dict) -> dict:
    """The spec with local paths: its data file and model folders pulled from the store and verified."""
    store = spec["store"]
    local = {**spec, "config": dict(spec["config"])}
    local["data"] = str(file_fetch(store["data"]["url"], sha256=store["data"]["sha256"], pin=True))
    for key, url in store.get("models", {}).items():
        local["config"][key] = str(folder_fetch(url))
    SCRATCH.mkdir(parents=True, exist_ok=True)
    local["out"], local["result"] = str((SCRATCH / "out").absolute()), str((SCRATCH / "result.json").absolute())
    local.pop("store")
    return local


def push(spec: dict, local: dict) -> None:
    """The output, then the result (last), to the places in the store the worker collects them from."""
    store, out = spec["store"], Path(local["out"])
    result = Path(local["result"]).read_bytes()  # before publishing moves the scratch folder into the cache
    if out.is_dir():
        folder_publish(out, store["out"])
    elif out.is_file():
        file_upload(out, store["out"])
    blob_write(store["result"], result)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or not args[0].isdigit():
        raise SystemExit("usage: python -m training.remote_job WORLD_SIZE s3://.../spec.json")
    world_size, spec_url = int(args[0]), args[1]
    configure()
    spec = json.loads(blob_read(spec_url))
    local = pull(spec)
    (SCRATCH / "spec.json").write_text(json.dumps(local))
    command = ([sys.executable, "-m", "training.lib.distributed", str(SCRATCH / "spec.json")] if world_size == 1
               else launch_command(world_size, SCRATCH / "spec.json"))
    code = subprocess.run(command).returncode  # its output is this job's log
    if code != 0:
        return code
    push(spec, local)
    print(f"output and result are in the store under {spec_url.rsplit('/', 1)[0]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
