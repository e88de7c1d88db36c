"""Export benchmark: time and peak memory of ``write_export`` at 10k and N votes.

    DJANGO_SETTINGS_MODULE=config.settings .venv/bin/python bench/export.py --votes 100000

Without ``DATABASE_URL`` it builds a throwaway SQLite file, bench/out/export-bench.sqlite3
(migrated, then deleted at the end). With ``DATABASE_URL`` it never touches that database:
it creates a separate throwaway database the way Django's test runner does
(``bench_export_<pid>``), and drops it at the end.

Each measurement runs in a fresh child process so that peak RSS (VmHWM) belongs to one export;
a second child repeats it under tracemalloc for the Python heap peak (tracemalloc slows the
run, so its time is not reported). Writes a markdown table to bench/out/export.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CASES = (("trl", ".jsonl"), ("raw", ".jsonl"), ("trl", ".parquet"), ("pairs", ".parquet"))
VOTERS = 3  # votes per comparison
WORDS = "the a model answer prompt because helpful correct clear short long reason step first then".split()


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOCAL_SECRET_KEY", "1")  # DEBUG is off: a key of its own (config/settings.py)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def _status_mib(key: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), MiB.

    VmHWM (peak RSS) rather than getrusage's ru_maxrss: ru_maxrss survives exec, so a child
    started by a big parent would report the parent's peak.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words)).capitalize() + "."


def seed(*, slug: str, votes: int, rng: random.Random) -> None:
    """A project with ``votes`` votes, VOTERS per comparison, realistic text sizes; bulk inserts."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from annotate.models import Checkpoint, Comparison, Completion, Project, Prompt, Vote, messages_hash, text_hash

    project = Project.objects.create(slug=slug, name=slug, votes_per_comparison=VOTERS)
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"{slug}-annotator-{i}", password="!") for i in range(20)]
    )
    base, tuned = Checkpoint.objects.bulk_create(
        [Checkpoint(project=project, name="base"), Checkpoint(project=project, name="dpo-1")]
    )
    n = -(-votes // VOTERS)
    prompts = []
    for i in range(n):
        messages = [{"role": "user", "content": f"{i}: {_text(rng, 30)}"}]  # ~200 characters
        prompts.append(Prompt(project=project, messages=messages, content_hash=messages_hash(messages)))
    Prompt.objects.bulk_create(prompts, batch_size=2000)
    completions = []
    for prompt in prompts:
        for checkpoint in (base, tuned):
            text = _text(rng, 90)  # ~600 characters
            completions.append(Completion(prompt=prompt, checkpoint=checkpoint, text=text, text_hash=text_hash(text)))
    Completion.objects.bulk_create(completions, batch_size=2000)
    comparisons = [
        Comparison(project=project, prompt=prompts[i], completion_a=completions[2 * i],
                   completion_b=completions[2 * i + 1], state=Comparison.State.CLOSED, vote_count=VOTERS)
        for i in range(n)
    ]
    Comparison.objects.bulk_create(comparisons, batch_size=2000)
    start, rows = timezone.now() - timedelta(days=30), []
    for i in range(votes):
        comparison = comparisons[i // VOTERS]
        choice = rng.choices(["a", "b", "tie", "both_bad"], weights=[42, 42, 10, 6])[0]
        rows.append(Vote(
            comparison=comparison, annotator=users[(i // VOTERS + i % VOTERS) % len(users)], choice=choice,
            winner_id={"a": comparison.completion_a_id, "b": comparison.completion_b_id}.get(choice),
            strength=rng.choice([1, 2, 3]) if choice in ("a", "b") else None,
            rationale=_text(rng, 12) if rng.random() < 0.2 else "", time_spent_ms=rng.randint(2000, 60000),
            created_at=start + timedelta(seconds=i),
        ))
    Vote.objects.bulk_create(rows, batch_size=2000)


def measure(*, slug: str, fmt: str, suffix: str, trace: bool) -> dict:
    """One export in this (fresh) process: seconds, rows, bytes, tracemalloc peak, RSS."""
    from annotate.exports import write_export
    from annotate.models import Project

    project = Project.objects.get(slug=slug)
    path = OUT / f"export-{slug}-{fmt}{suffix}"
    rss_before = _status_mib("VmRSS")
    if trace:
        tracemalloc.start()
    cpu, started = _cpu_seconds(), time.perf_counter()
    rows = write_export(project=project, fmt=fmt, path=path)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    result = {
        "seconds": seconds, "cpu_seconds": cpu, "rows": rows, "bytes": path.stat().st_size, "heap_peak_mib": peak,
        "rss_before_mib": rss_before, "max_rss_mib": _status_mib("VmHWM"),
    }
    path.unlink()
    return result


def _child(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"measurement {args} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--votes", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000, help="the smaller size, to show memory is flat")
    parser.add_argument("--measure", nargs=4, metavar=("SLUG", "FORMAT", "SUFFIX", "TRACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.measure:
        _setup_django()
        slug, fmt, suffix, trace = args.measure
        print(json.dumps(measure(slug=slug, fmt=fmt, suffix=suffix, trace=trace == "1")))
        return

    sqlite_file = None
    if not os.environ.get("DATABASE_URL"):
        sqlite_file = OUT / "export-bench.sqlite3"
        for stale in OUT.glob("export-bench.sqlite3*"):
            stale.unlink()
        os.environ["DATABASE_URL"] = f"sqlite:///{sqlite_file}"
    _setup_django()
    from django.core.management import call_command
    from django.db import connection

    real_name = connection.settings_dict["NAME"]
    if sqlite_file is None:  # a throwaway database beside the real one, test-runner style
        connection.settings_dict["TEST"] = {"NAME": f"bench_export_{os.getpid()}"}
        throwaway = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        env = os.environ | {"DATABASE_URL": _url_with_name(os.environ["DATABASE_URL"], throwaway)}
    else:
        call_command("migrate", verbosity=0)
        env = dict(os.environ)
    try:
        results = []
        for votes in sorted({args.small, args.votes}):
            slug = f"bench-{votes}"
            started = time.perf_counter()
            seed(slug=slug, votes=votes, rng=random.Random(votes))
            print(f"seeded {votes:,} votes in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            for fmt, suffix in CASES:
                # Best of two: the wall clock is noisy on a shared 2-core machine.
                timed = min((_child(env, slug, fmt, suffix, "0") for _ in range(2)), key=lambda r: r["seconds"])
                traced = _child(env, slug, fmt, suffix, "1")
                results.append({"votes": votes, "format": fmt, "file": suffix[1:], **timed,
                                "heap_peak_mib": traced["heap_peak_mib"]})
                print(_row(results[-1]), file=sys.stderr)
    finally:
        if sqlite_file is None:
            connection.creation.destroy_test_db(real_name, verbosity=0)
        else:
            connection.close()
            for stale in OUT.glob("export-bench.sqlite3*"):
                stale.unlink()
    report = _report(results, engine=connection.vendor)
    (OUT / "export.md").write_text(report)
    print(report)


def _url_with_name(url: str, name: str) -> str:
    from urllib.parse import quote, urlparse

    return urlparse(url)._replace(path="/" + quote(name)).geturl()


HEADER = (
    "| votes | format | file | rows | seconds | CPU s | votes/s | file MiB | Python heap peak MiB "
    "| RSS before MiB | peak RSS MiB |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _row(r: dict) -> str:
    return (
        f"| {r['votes']:,} | {r['format']} | {r['file']} | {r['rows']:,} | {r['seconds']:.2f} "
        f"| {r['cpu_seconds']:.2f} "
        f"| {r['votes'] / r['seconds']:,.0f} | {r['bytes'] / 2**20:.1f} | {r['heap_peak_mib']:.1f} "
        f"| {r['rss_before_mib']:.0f} | {r['max_rss_mib']:.0f} |"
    )


def _report(results: list[dict], *, engine: str) -> str:
    biggest = max(results, key=lambda r: (r["votes"], r["format"] == "raw" and r["file"] == "jsonl"))
    per_50k = 50_000 / biggest["votes"] * biggest["seconds"]
    return "\n".join([
        f"# Export benchmark ({engine}, {os.cpu_count()} CPUs)", "",
        f"{VOTERS} votes per comparison; prompts ~200 and completions ~600 characters. Each row is one",
        "`write_export` in a fresh process (seconds: best of two wall-clock runs; CPU s: user + system",
        "time of that run); the heap peak comes from another run under tracemalloc.", "",
        HEADER, *(_row(r) for r in results), "",
        f"Raw JSONL at this rate writes 50k records in about {per_50k:.1f} s; Label Studio took ~4 minutes "
        "for 50k (HumanSignal/label-studio #5873).", "",
    ])


if __name__ == "__main__":
    main()
