"""Load and fault figures for the split topology: a web host, GPU hosts, and an S3-compatible store.

    .venv/bin/python bench/split_topology.py                  # both parts, ~4 minutes
    .venv/bin/python bench/split_topology.py --part vote --duration 5
    .venv/bin/python bench/split_topology.py --part fault

1. The vote path while a GPU host uploads checkpoints (``--part vote``). The web app (granian, 2
   workers x 4 threads, on PostgreSQL) serves 50 annotators offering 400 votes/s (one request a
   vote, asking for the next pair: the API's ``"next": true``), as ``bench/vote_http.py`` drives it.
   Windows alternate: quiet (the peer: nothing else runs), and a GPU host publishing checkpoints
   the way a run does (``annotate.artifacts.folder_publish`` of a folder of ``--mib`` MiB to moto's
   S3 server, manifest last, verified, then a ``Checkpoint`` row in the same database), over and
   over for the whole window. On this one machine the "other hosts" (the uploader and the store)
   share the web host's two cores, so they run under SCHED_IDLE (``chrt --idle 0``: only on CPU
   time the web host's processes leave), standing in for their own hosts. A control window runs
   two busy loops the same way and uploads nothing: what this box costs the vote path when
   anything else runs on it. A last window runs the uploader and the store at the web app's
   priority, the worst case of a box that does everything. Per window: votes/s, cycle p50/p99,
   and what the uploader moved.
2. A GPU host that dies mid-upload (``--part fault``). A real Celery worker process (the GPU
   host) runs a DPO run on a ~140 MiB model; the bench watches the store, and once the first
   files of the checkpoint are there but not its manifest, kills the worker's whole process group
   with SIGKILL. Then: is there a row pointing at the partial upload? What does the run say?
   The host "comes back" (a worker starts there): how long until the run is failed, with what
   error, and what is left in the store? A retry: does it publish exactly once, and does the web
   host read the checkpoint back verified?

Only 127.0.0.1 is contacted. The report goes to stdout and ``bench/out/split_topology.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import vote_http  # noqa: E402  (bench/vote_http.py: the load generator and its server set-up)

KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "S3_REGION": "us-east-1"}
BUCKET = "flywheel-bench"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "vote", "fault"), default="all")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per window")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=400.0, help="votes/s offered, the shared layout")
    p.add_argument("--pinned-rate", type=float, default=200.0, help="votes/s offered to the one core of the pinned layout")
    p.add_argument("--layouts", default="shared,pinned", help="shared: all on both cores; pinned: web on CPU 0, the rest on CPU 1")
    p.add_argument("--clients", type=int, default=50, help="annotators")
    p.add_argument("--mib", type=int, default=256, help="size of the checkpoint folder the GPU host uploads")
    p.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/14", help="the fault part's broker, if it answers")
    p.add_argument("--out", default=str(OUT / "split_topology.md"))
    p.add_argument("--uploader", nargs=2, metavar=("SLUG", "STATS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- the store


IDLE = ["chrt", "--idle", "0"]  # SCHED_IDLE: runs only on CPU time the web host's processes leave


def store_start(scratch: Path, *, prefix: list[str]) -> tuple[subprocess.Popen, str]:
    port = vote_http.free_port()
    cmd = ([*prefix, str(Path(sys.executable).with_name("moto_server")),
            "-H", "127.0.0.1", "-p", str(port)])
    proc = subprocess.Popen(cmd, stdout=(scratch / "moto.log").open("wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return proc, endpoint


def store_env(endpoint: str) -> dict[str, str]:
    return {"ARTIFACTS_URL": f"s3://{BUCKET}/artifacts", "S3_ENDPOINT_URL": endpoint, **KEYS}


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- part 1: votes while a checkpoint uploads


def uploader(slug: str, stats_path: str, mib: int) -> None:
    """A GPU host's publishing, over and over: upload a checkpoint folder, then insert its row."""
    import django

    django.setup()
    from annotate.artifacts import artifact_url, folder_publish, staging_path
    from annotate.models import Checkpoint, Project

    project = Project.objects.get(slug=slug)
    source = Path(tempfile.mkdtemp(prefix="ckpt-", dir=os.environ["ARTIFACTS_DIR"]))
    for i in range(4):  # shards, as save_pretrained writes a large model
        (source / f"model-{i + 1:05d}-of-00004.safetensors").write_bytes(os.urandom(mib << 18))
    (source / "config.json").write_text("{}")
    stats = {"publishes": 0, "bytes": 0, "started": time.monotonic()}
    sent_in_file = [0]

    def on_term(*_):
        stats["seconds"] = time.monotonic() - stats["started"]
        stats["bytes"] += sent_in_file[0]
        Path(stats_path).write_text(json.dumps(stats))
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    while True:
        url = artifact_url("checkpoints", slug, f"upload-{os.getpid()}-{stats['publishes']}")
        staging = staging_path(url)
        shutil.copytree(source, staging)
        folder_publish(staging, url, progress=lambda sent, total: sent_in_file.__setitem__(0, sent))
        Checkpoint.objects.create(project=project, name=url.rsplit("/", 1)[-1], uri=url,
                                  state=Checkpoint.State.CANDIDATE)
        stats["publishes"] += 1
        stats["bytes"] += sent_in_file[0]
        sent_in_file[0] = 0
        shutil.rmtree(Path(os.environ["ARTIFACTS_CACHE_DIR"]) / "folders", ignore_errors=True)


def postgres_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout.split()
    found += subprocess.run(["pgrep", "-f", "^postgres:"], capture_output=True, text=True).stdout.split()
    return sorted({int(pid) for pid in found})


def pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass  # gone, or not ours to pin: it then runs anywhere, which only blurs the split


def part_vote(args, layout: str) -> list[str]:
    """``shared``: the other hosts' processes beside the web app on every core (SCHED_IDLE, then the
    same priority). ``pinned``: two hosts staged on one machine: the web app, PostgreSQL and the
    load generator on CPU 0, the uploader, the store and the control's busy loop on CPU 1."""
    vargs = vote_http.parse_args(["--server", "granian", "--workers", "2", "--threads", "4"])
    rate = args.rate if layout == "shared" else args.pinned_rate
    # (window, what else runs: None, "upload" or "burn", how it is started)
    away = ["taskset", "-c", "1"]
    if layout == "shared":
        windows = [("quiet", None, []), ("GPU host uploading (SCHED_IDLE)", "upload", IDLE), ("quiet", None, []),
                   ("GPU host uploading (SCHED_IDLE)", "upload", IDLE),
                   ("control: 2 busy loops, no upload (SCHED_IDLE)", "burn", IDLE),
                   ("GPU host uploading, same priority", "upload", [])]
    else:
        windows = [("quiet", None, []), ("GPU host uploading on CPU 1", "upload", away), ("quiet", None, []),
                   ("GPU host uploading on CPU 1", "upload", away),
                   ("control: a busy loop on CPU 1, no upload", "burn", away)]
    everywhere = os.sched_getaffinity(0)
    db, url = "flywheel_bench_split", f"{args.pg}/flywheel_bench_split"
    vote_http.database_recreate(args.pg, db)
    scratch = Path(tempfile.mkdtemp(prefix="split_topology-"))
    os.environ.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="config.settings", LOG_LEVEL="WARNING", LOCAL_SECRET_KEY="1",
                      FLYWHEEL_VAR_DIR=str(scratch), CELERY_BROKER_URL="filesystem://", CELERY_TASK_ALWAYS_EAGER="0")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    seconds = len(windows) * (args.duration + args.warmup)
    tokens = vote_http.seed(comparisons={1: int(rate * seconds * 1.3) + 1000}, annotators=args.clients,
                            retrain_threshold=None)
    connection.close()
    if layout == "pinned":  # the web host: this process (and so the server it starts), and PostgreSQL
        os.sched_setaffinity(0, {0})
        pin(postgres_pids(), {0})
    port = vote_http.free_port()
    server, _ = vote_http.server_start(vargs, url, port, scratch / "granian.log")
    meter = vote_http.CpuMeter(server.pid, url)
    rows, created, quiet_p99 = [], 0, []
    try:
        for i, (name, other, prefix) in enumerate(windows):
            store = up = None
            burners = [subprocess.Popen([*prefix, sys.executable, "-c", "while True: pass"])
                       for _ in range(2 if layout == "shared" else 1)] if other == "burn" else []
            if other == "upload":
                store, endpoint = store_start(scratch, prefix=prefix)
                gpu_host = scratch / f"gpu-host-{i}"
                env = {**os.environ, **store_env(endpoint), "ARTIFACTS_DIR": str(gpu_host / "scratch"),
                       "ARTIFACTS_CACHE_DIR": str(gpu_host / "cache")}
                (gpu_host / "scratch").mkdir(parents=True)
                up = subprocess.Popen([*prefix, sys.executable, __file__,
                                       "--mib", str(args.mib), "--uploader", "bench-o1",
                                       str(scratch / f"upload-{i}.json")], env=env, cwd=ROOT)
                time.sleep(2.0)  # its folder written and the first upload under way
            meter.conn.execute("VACUUM (ANALYZE) annotate_comparison, annotate_lease, annotate_vote")
            conns = [vote_http.Conn(j, tokens[j], "bench-o1", port, f"w{i}", combined=True)
                     for j in range(args.clients)]
            lv = vote_http.drive(conns, vote_http.Level(name, args.clients), warmup=args.warmup,
                                 duration=args.duration, rate=rate, meter=meter)
            created += lv.created_total
            moved = ""
            for burner in burners:
                burner.kill()
                burner.wait()
            if up is not None:
                stop(up)
                stop(store)
                stats = json.loads((scratch / f"upload-{i}.json").read_text())
                moved = (f"{stats['bytes'] / 2**20:,.0f} MiB in {stats['seconds']:.0f} s "
                         f"({stats['bytes'] / 2**20 / stats['seconds']:,.0f} MiB/s), {stats['publishes']} published")
            p50, p99 = vote_http.pct(lv.cycle_ns, .5), vote_http.pct(lv.cycle_ns, .99)
            if other is None:
                quiet_p99.append(p99)
            per_vote = {k: 1000 * lv.cpu[k] / max(lv.votes, 1) for k in ("server", "postgres")}
            rows.append((name, lv.votes / lv.seconds, p50, p99, sum(lv.errors.values()), per_vote, moved))
            print(rows[-1], flush=True)
        facts = vote_http.integrity("bench-o1", created)
    finally:
        meter.close()
        vote_http.server_stop(server)
        connection.close()
        vote_http.database_drop(args.pg, db)
        shutil.rmtree(scratch, ignore_errors=True)
        if layout == "pinned":
            os.sched_setaffinity(0, everywhere)
            pin(postgres_pids(), everywhere)

    noise = max(quiet_p99) - min(quiet_p99)
    title = {"shared": "the uploader and the store beside the web app on both cores",
             "pinned": "two hosts staged on one machine: the web host on CPU 0, the GPU host and the store on CPU 1"}
    lines = [
        f"### The vote path while a GPU host uploads a checkpoint: {title[layout]}",
        "",
        f"{args.clients} annotators offering {rate:g} votes/s (one request a vote, asking for the next pair),"
        f" granian 2 workers x 4 threads on PostgreSQL; {args.warmup:g} s warm-up and {args.duration:g} s measured"
        f" per window, windows in this order; the uploader publishes a {args.mib} MiB folder (4 shards) to moto's"
        " S3 server and inserts its Checkpoint row, again and again."
        + (" PostgreSQL's processes, the server and the load generator are pinned to CPU 0 (sched_setaffinity),"
           " the uploader, the store and the busy loop to CPU 1; one core serves the votes, hence the lower rate."
           if layout == "pinned" else ""),
        "",
        "| window | votes/s | cycle p50 ms | cycle p99 ms | errors | CPU ms per vote: web app / PostgreSQL"
        " | the GPU host moved |",
        "|---|---|---|---|---|---|---|",
        *(f"| {n} | {r:,.0f} | {p50:.1f} | {p99:.1f} | {e} | {c['server']:.2f} / {c['postgres']:.2f} | {m or '-'} |"
          for n, r, p50, p99, e, c, m in rows),
        "",
        f"Noise between the two quiet windows: {noise:.1f} ms of p99. Integrity after all windows (every count"
        " but votes must be 0): " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".",
    ]
    uploading = [row for row in rows if row[0] == windows[1][0]]
    control = next(row for row in rows if row[0].startswith("control"))
    within = all(p99 <= max(quiet_p99) + max(noise, 2.0) and not errors for _, _, _, p99, errors, _, _ in uploading)
    lines += ["", f"p99 with the GPU host uploading ({windows[1][0].removeprefix('GPU host uploading ').strip('()')}) within"
              f" the quiet windows' noise (or 2 ms): **{'yes' if within else 'no'}**; at or below the control"
              f" window's: **{'yes' if all(row[3] <= control[3] for row in uploading) else 'no'}**; every vote"
              f" answered without error in every window: **{'yes' if not any(row[4] for row in rows) else 'no'}**."]
    if layout == "shared":
        lines += ["", "How to read it: the web app's CPU per vote says whether the app does any of the upload's"
                  " work (it should not: the GPU host uploads, the web app only sees one INSERT per checkpoint)."
                  " The p99 says what sharing the cores costs: the control window shows that any other work on"
                  " the same cores raises the tail, even at SCHED_IDLE. The goal, a p99 unchanged within noise,"
                  " is for a web host that the GPU hosts and the store do not share: the pinned layout stages it."]
    ok = all(v == 0 for k, v in facts.items() if k != "votes")
    return lines + ["", f"Vote integrity: {'PASS' if ok else 'FAIL'}"]


# ---------------------------------------------------------------- part 2: a GPU host dies mid-upload


def redis_answers(url: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def save_model(folder: Path) -> int:
    """A ~200 MB Llama (random weights, the tests' word tokenizer): big enough that its upload takes a while."""
    import torch
    from transformers import LlamaForCausalLM

    from tests.tiny import llama_config, llama_tokenizer

    tok = llama_tokenizer(chat=True)
    torch.manual_seed(0)
    config = llama_config(tok)
    config.update({"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4,
                   "num_attention_heads": 8, "num_key_value_heads": 8})
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def part_fault(args) -> list[str]:
    db, url = "flywheel_bench_fault", f"{args.pg}/flywheel_bench_fault"
    vote_http.database_recreate(args.pg, db)
    scratch = Path(tempfile.mkdtemp(prefix="split_fault-"))
    store, endpoint = store_start(scratch, prefix=[])
    broker = args.redis if redis_answers(args.redis) else "filesystem://"
    common = {"DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_LEVEL": "WARNING", "LOCAL_SECRET_KEY": "1",
              "FLYWHEEL_VAR_DIR": str(scratch), "CELERY_BROKER_URL": broker, "CELERY_TASK_ALWAYS_EAGER": "0",
              **store_env(endpoint)}
    os.environ.update(common, ARTIFACTS_DIR=str(scratch / "web" / "scratch"),
                      ARTIFACTS_CACHE_DIR=str(scratch / "web" / "cache"))
    gpu_env = {**os.environ, **common, "ARTIFACTS_DIR": str(scratch / "gpu" / "scratch"),
               "ARTIFACTS_CACHE_DIR": str(scratch / "gpu" / "cache"), "PYTHONUNBUFFERED": "1"}
    import boto3
    import django

    django.setup()
    from django.core.management import call_command

    from annotate import artifacts, services
    from annotate.models import Checkpoint, Membership
    from annotate.snapshots import snapshot_freeze
    from config.celery import app
    from tests.training.test_reward_runs import vote_by_rule
    from training.models import TrainingRun
    from training.policy import dpo_start
    from training.runs import output_url
    from training.starts import run_retry

    call_command("migrate", verbosity=0)
    if broker.startswith("redis"):
        app.control.purge()
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                      region_name="us-east-1")
    project = services.project_create(slug="fault", name="Fault")
    annotator = services.user_with_role(project=project, username="ann", password="x" * 12,
                                        role=Membership.Role.ANNOTATOR)
    vote_by_rule(project, annotator, 16)
    base_url = artifacts.artifact_url("checkpoints", "fault", "base")
    staging = artifacts.staging_path(base_url)
    size = save_model(staging)
    base = Checkpoint.objects.create(project=project, name="base", uri=artifacts.folder_publish(staging, base_url),
                                     state=Checkpoint.State.INCUMBENT)
    snapshot = snapshot_freeze(project=project)
    log = scratch / "worker.log"
    worker_cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu", "--pool", "solo",
                  "--loglevel", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"]

    def start_worker() -> subprocess.Popen:
        return subprocess.Popen(worker_cmd, cwd=ROOT, env=gpu_env, stdout=log.open("a"), stderr=subprocess.STDOUT,
                                start_new_session=True)

    def wait(run, until, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run.refresh_from_db()
            if until(run):
                return run
            time.sleep(0.1)
        raise SystemExit(f"run {run.pk} is {run.state} at step {run.step}; worker log:\n{log.read_text()[-3000:]}")

    def keys(prefix: str) -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
        return sorted(o["Key"].removeprefix(prefix + "/") for page in pages for o in page.get("Contents", []))

    checks: list[tuple[str, str, bool]] = []
    worker = None

    def multipart(prefix: str) -> list[str]:
        uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads", [])
        return [u["Key"].rsplit("/", 1)[-1] for u in uploads]

    def crash_mid_upload(attempts: int, label: str):
        """Start a run on a fresh GPU-host worker, kill the host mid-upload, check the store and the rows."""
        nonlocal worker
        gpu_env["RUN_MAX_ATTEMPTS"] = str(attempts)
        worker = start_worker()
        run = dpo_start(project=project, checkpoint=base, snapshot=snapshot,
                        config={"batch_size": 4, "learning_rate": 1e-4, "num_threads": 2, "max_steps": 1})
        prefix = output_url(run).removeprefix(f"s3://{BUCKET}/")
        deadline, present, in_flight, first_seen = time.monotonic() + 600, [], [], None
        # Wait for the weights to be in flight (a multipart upload), else kill 5 s after the first file.
        while time.monotonic() < deadline and worker.poll() is None:
            present, in_flight = keys(prefix), multipart(prefix)
            first_seen = first_seen or (time.monotonic() if present else None)
            if in_flight or "model.safetensors" in present or (first_seen and time.monotonic() - first_seen > 5):
                break
            time.sleep(0.01)
        os.killpg(worker.pid, signal.SIGKILL)  # the GPU host goes down, with everything it runs
        worker.wait()
        time.sleep(1.0)
        present_after = keys(prefix)
        checks.append((f"{label}: killed mid-upload", f"files in the store: {', '.join(present_after) or 'none'}; "
                       f"multipart upload in flight: {', '.join(in_flight) or 'none'}",
                       bool(present_after) and "manifest.json" not in present_after))
        run.refresh_from_db()
        rows = Checkpoint.objects.filter(name=f"dpo-r{run.pk}").count()
        checks.append((f"{label}: no row points at the partial upload; the run still reads running while the"
                       " host is down", f"{rows} Checkpoint rows; {run.state}, step {run.step}",
                       rows == 0 and run.state == TrainingRun.State.RUNNING))
        worker = start_worker()  # the host is back
        return run, prefix, time.monotonic()

    def published(run) -> tuple[list[str], str]:
        names = list(Checkpoint.objects.filter(name__startswith="dpo-").values_list("name", flat=True))
        return names, f"DPO checkpoints in the database: {', '.join(names)}"

    try:
        # 1. The default: the run starts again by itself as its next attempt and publishes once.
        run, prefix, back_at = crash_mid_upload(3, "restarted")
        run = wait(run, lambda r: r.attempt == 2, 120)
        again_in = time.monotonic() - back_at
        lost = next((line for line in run.log_tail.splitlines() if line.startswith("attempt 1 lost")), "")
        checks.append(("restarted: once the host's worker starts, the lost attempt is named in the run's log and"
                       " the run starts again", f"{again_in:.1f} s after the worker started: \"{lost}\"",
                       "is gone" in lost))
        left, parts_left = keys(prefix), multipart(prefix)
        checks.append(("restarted: the lost attempt's partial upload is removed",
                       f"{len(left)} objects and {len(parts_left)} unfinished multipart uploads left", not left and not parts_left))
        run = wait(run, lambda r: r.finished, 900)
        names, seen = published(run)
        checks.append(("restarted: the run publishes once", f"{run.state} (attempt {run.attempt}); {seen}; at"
                       f" {run.checkpoint_out and run.checkpoint_out.uri.rsplit('/', 1)[-1]}",
                       run.state == TrainingRun.State.SUCCEEDED and names == [f"dpo-r{run.pk}"]))
        folder = artifacts.folder_fetch(run.checkpoint_out.uri)  # the web host reads it, verified
        manifest = json.loads((folder / "manifest.json").read_text())
        checks.append(("restarted: the web host reads the published checkpoint back, verified",
                       f"{len(manifest['files'])} files, {sum(f['size'] for f in manifest['files'].values()) / 2**20:,.0f}"
                       " MiB, sha256 checked", (folder / "config.json").exists()))
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)

        # 2. With RUN_MAX_ATTEMPTS=1: the run fails with a clear error, and a retry publishes once.
        run, prefix, back_at = crash_mid_upload(1, "no restarts")
        run = wait(run, lambda r: r.finished, 120)
        checks.append(("no restarts: the run fails with a clear error once the host's worker starts",
                       f"{run.state} {time.monotonic() - back_at:.1f} s after the worker started: \"{run.error}\"",
                       run.state == TrainingRun.State.FAILED and "is gone" in run.error))
        left, parts_left = keys(prefix), multipart(prefix)
        checks.append(("no restarts: the partial upload is removed",
                       f"{len(left)} objects and {len(parts_left)} unfinished multipart uploads left", not left and not parts_left))
        retry = wait(run_retry(run=run), lambda r: r.finished, 900)
        names, seen = published(retry)
        checks.append(("no restarts: the retry publishes once", f"{retry.state}; {seen}",
                       retry.state == TrainingRun.State.SUCCEEDED and names[-1:] == [f"dpo-r{retry.pk}"]
                       and f"dpo-r{run.pk}" not in names))
        run.refresh_from_db()
        checks.append(("no restarts: the crashed run stays failed (no second delivery revives it)", run.state,
                       run.state == TrainingRun.State.FAILED))
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        stop(store)
        from django.db import connection

        connection.close()
        vote_http.database_drop(args.pg, db)
        shutil.rmtree(scratch, ignore_errors=True)

    ok = all(passed for _, _, passed in checks)
    return [
        "### A GPU host killed mid-upload",
        "",
        f"A real Celery worker process (the GPU host, `--pool solo`, broker {broker.split('://')[0]}) runs one"
        f" DPO step on a {size / 2**20:,.0f} MiB model and publishes to moto's S3 server; the bench kills its"
        " process group with SIGKILL once the weights are being uploaded, before the manifest. Then a worker"
        " starts on that host again. Twice: at the default `RUN_MAX_ATTEMPTS=3` the run starts again by itself;"
        " at `RUN_MAX_ATTEMPTS=1` it fails, and is retried from the console's action (`training.starts.run_retry`).",
        "",
        "| check | observed | |",
        "|---|---|---|",
        *(f"| {name} | {seen} | {'PASS' if passed else 'FAIL'} |" for name, seen, passed in checks),
        "",
        f"Fault handling: {'PASS' if ok else 'FAIL'}",
    ]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.uploader:
        uploader(args.uploader[0], args.uploader[1], args.mib)
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    parts: list[str] = []
    if args.part in ("all", "vote"):
        for layout in args.layouts.split(","):
            parts += part_vote(args, layout) + [""]
    if args.part in ("all", "fault"):
        # Its own process: Django is set up once per process, on the other part's database.
        if args.part == "all":
            out = Path(tempfile.mkstemp(suffix=".md")[1])
            subprocess.run([sys.executable, __file__, "--part", "fault", "--out", str(out), "--pg", args.pg,
                            "--redis", args.redis], check=True, cwd=ROOT)
            text = out.read_text()
            out.unlink()
            parts += text.split("\n", 4)[-1].splitlines()
        else:
            parts += part_fault(args)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/split_topology.py", *argv])
    text = "\n".join([
        "# Split topology: votes during an upload, and a GPU host dying mid-upload",
        "",
        f"- command: `{command}`",
        f"- machine: {vote_http.machine()}; load average when it started: {load}",
        "",
        *parts,
    ]) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0 if "FAIL" not in text else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
