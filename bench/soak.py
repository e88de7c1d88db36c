"""Soak: annotators voting for minutes through worker SIGKILLs and a PostgreSQL restart; nothing lost.

    .venv/bin/python bench/soak.py                        # 50 annotators, 120 s, 3 worker kills, 1 restart
    .venv/bin/python bench/soak.py --duration 40 --kills 1 --no-db-restart

The production server (granian, 2 workers x 4 threads, ``--respawn-failed-workers``, as the
Dockerfile runs it) on a throwaway PostgreSQL database (``flywheel_soak``), seeded as
``bench/vote_http.py`` seeds it (overlap 2). Each annotator is a thread with its own connection:
next pair, then the vote with an idempotency key, paced at ``--rate`` votes/s in all; a request that
fails (refused, reset, a 5xx or 503) is sent again, the same vote with the same key, every 50 ms,
until it is acknowledged. Faults: SIGKILL of one server worker at evenly spaced times, then a
restart of the machine's PostgreSQL (``pg_ctlcluster ... restart``: it drops every connection, so
run nothing else against it meanwhile). Afterwards, from the database: every acknowledged vote is
stored, none twice, no comparison over its overlap; and per fault, the longest time any annotator
went from a failed request to the next acknowledged one.

Goal (issue 20): 0 acknowledged votes lost, 0 duplicates, 0 over the overlap, requests failing for at
most 1 s per fault. The report goes to stdout and ``bench/out/soak.md``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import vote_http  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--rate", type=float, default=150.0, help="votes/s offered by all annotators together")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs of a server worker")
    p.add_argument("--no-db-restart", action="store_true")
    p.add_argument("--overlap", type=int, default=2)
    p.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--out", default=str(OUT / "soak.md"))
    return p.parse_args(argv)


class Annotator(threading.Thread):
    """Next pair, then its vote, retried with the same idempotency key until acknowledged."""

    def __init__(self, i: int, token: str, port: int, slug: str, interval: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.i, self.token, self.port, self.slug, self.interval, self.stop = i, token, port, slug, interval, stop
        self.conn: http.client.HTTPConnection | None = None
        self.acknowledged: dict[int, int] = {}  # comparison -> vote id
        self.refused = 0  # 409: full (the overlap was reached by others): an answer, not a failure
        self.failures: list[tuple[float, float, str]] = []  # (first failed attempt, next acknowledged answer, why)
        self.requests = 0

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        self.requests += 1
        try:
            self.conn.request(method, path, body=data, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise

    def _until_answered(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        failed_at, why = None, ""
        while True:
            try:
                status, payload = self._call(method, path, body)
                if status < 500:
                    if failed_at is not None:
                        self.failures.append((failed_at, time.monotonic(), why))
                    return status, payload
                why = f"HTTP {status}"
            except (OSError, http.client.HTTPException) as error:
                why = type(error).__name__
            failed_at = failed_at or time.monotonic()
            time.sleep(0.05)

    def run(self) -> None:
        due = time.monotonic() + random.random() * self.interval
        while not self.stop.is_set():
            time.sleep(max(0.0, due - time.monotonic()))
            due += self.interval
            status, payload = self._until_answered("GET", f"/api/projects/{self.slug}/comparisons/next")
            if status != 200:
                continue
            comparison = json.loads(payload)["id"]
            choice = random.choice(["a", "b", "tie", "both_bad"])
            status, payload = self._until_answered("POST", f"/api/comparisons/{comparison}/vote",
                                                   {"choice": choice, "idempotency_key": f"soak-{self.i}-{comparison}"})
            if status in (200, 201):
                self.acknowledged[comparison] = json.loads(payload)["id"]
            elif status == 409:
                self.refused += 1
            else:
                raise RuntimeError(f"annotator {self.i}: HTTP {status}: {payload[:200]!r}")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def restart_postgres() -> float:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    started = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True)
    return time.monotonic() - started


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    vargs = vote_http.parse_args(["--server", "granian", "--workers", "2", "--threads", "4"])
    db, url = "flywheel_soak", f"{args.pg}/flywheel_soak"
    OUT.mkdir(parents=True, exist_ok=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    vote_http.database_recreate(args.pg, db)
    scratch = tempfile.mkdtemp(prefix="soak-")
    os.environ.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="config.settings", LOG_LEVEL="WARNING", LOCAL_SECRET_KEY="1",
                      FLYWHEEL_VAR_DIR=scratch, CELERY_BROKER_URL="filesystem://", CELERY_TASK_ALWAYS_EAGER="0")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    comparisons = int(args.rate * args.duration * 1.5 / args.overlap) + 500
    tokens = vote_http.seed(comparisons={args.overlap: comparisons}, annotators=args.clients, retrain_threshold=0)
    connection.close()
    port = vote_http.free_port()
    server, cmdline = vote_http.server_start(vargs, url, port, Path(scratch) / "granian.log")
    stop = threading.Event()
    clients = [Annotator(i, tokens[i], port, f"bench-o{args.overlap}", args.clients / args.rate, stop)
               for i in range(args.clients)]
    faults: list[tuple[float, str]] = []
    started = time.monotonic()
    try:
        for client in clients:
            client.start()
        plan = [(args.duration * (k + 1) / (args.kills + 2), "kill") for k in range(args.kills)]
        if not args.no_db_restart:
            plan.append((args.duration * (args.kills + 1) / (args.kills + 2), "restart"))
        for at, what in sorted(plan):
            time.sleep(max(0.0, started + at - time.monotonic()))
            if what == "kill":
                workers = _children(server.pid)
                victim = random.choice(workers)
                os.kill(victim, signal.SIGKILL)
                faults.append((time.monotonic(), f"SIGKILL of server worker {victim}"))
                print(f"{time.monotonic() - started:5.1f} s: killed worker {victim}", flush=True)
            else:
                faults.append((time.monotonic(), "PostgreSQL restart"))
                took = restart_postgres()
                faults[-1] = (faults[-1][0], f"PostgreSQL restart ({took:.1f} s to come back)")
                print(f"{time.monotonic() - started:5.1f} s: restarted PostgreSQL in {took:.1f} s", flush=True)
        time.sleep(max(0.0, started + args.duration - time.monotonic()))
        stop.set()
        for client in clients:
            client.join(timeout=60)
        elapsed = time.monotonic() - started
        assert server.poll() is None, "the server stopped"

        import psycopg

        with psycopg.connect(url) as conn:
            stored = dict(conn.execute("SELECT id, comparison_id FROM annotate_vote").fetchall())
            per_pair = conn.execute("SELECT COUNT(*) FROM (SELECT annotator_id, comparison_id FROM annotate_vote "
                                    "GROUP BY 1, 2 HAVING COUNT(*) > 1) d").fetchone()[0]
            over = conn.execute("SELECT COUNT(*) FROM annotate_comparison c JOIN annotate_project p ON "
                                "p.id = c.project_id WHERE (SELECT COUNT(*) FROM annotate_vote v WHERE "
                                "v.comparison_id = c.id) > p.votes_per_comparison").fetchone()[0]
    finally:
        stop.set()
        vote_http.server_stop(server)
        from django.db import connection as django_connection

        django_connection.close()
        vote_http.database_drop(args.pg, db)

    acknowledged = {vote: comparison for c in clients for comparison, vote in c.acknowledged.items()}
    lost = [vote for vote, comparison in acknowledged.items() if stored.get(vote) != comparison]
    unacknowledged = len(stored) - len(acknowledged)
    rows = []
    outages = []
    for k, (at, what) in enumerate(faults):
        until = faults[k + 1][0] if k + 1 < len(faults) else float("inf")
        streaks = [(end - begin, why) for c in clients for begin, end, why in c.failures if at <= begin < until]
        longest = max(streaks, default=(0.0, ""))
        outages.append(longest[0])
        kinds = sorted({why for _, why in streaks})
        rows.append(f"| {at - started:.0f} s | {what} | {len(streaks)} | {longest[0]:.2f} s | {', '.join(kinds) or '-'} |")
    stray = [c for c in clients for begin, _, _ in c.failures if begin < faults[0][0]] if faults else []
    requests = sum(c.requests for c in clients)
    ok = not lost and per_pair == 0 and over == 0 and all(o <= 1.0 for o in outages) and not stray
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/soak.py", *argv])
    text = "\n".join([
        "# Soak: voting through server worker kills and a database restart",
        "",
        f"- command: `{command}`",
        f"- machine: {vote_http.machine()}; load average when it started: {load}",
        f"- server: `{' '.join(shlex.quote(a) for a in cmdline[2:])}` on PostgreSQL; {args.clients} annotators"
        f" offering {args.rate:g} votes/s in all (next, then the vote with an idempotency key; a failed request"
        f" sent again every 50 ms until answered), overlap {args.overlap}, {elapsed:.0f} s",
        "",
        "| at | fault | requests that failed first | longest until answered | how they failed |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Votes acknowledged: {len(acknowledged):,} ({len(acknowledged) / elapsed:,.0f}/s), {requests:,} requests;"
        f" refused as full (409, an answer): {sum(c.refused for c in clients):,}. Stored: {len(stored):,}.",
        f"Acknowledged but not stored (lost): **{len(lost)}**; an annotator's vote stored twice: **{per_pair}**;"
        f" comparisons over their overlap: **{over}**; stored but never acknowledged: {unacknowledged}"
        f" (each annotator waits for the answer to its vote, so 0 is expected); failures before the first"
        f" fault: {len(stray)}.",
        "",
        "Goal (issue 20): 0 lost, 0 duplicates, 0 over the overlap, requests failing for at most 1 s per fault:"
        f" **{'met' if ok else 'not met'}**.",
        "",
        f"Result: {'PASS' if not lost and per_pair == 0 and over == 0 else 'FAIL'}",
    ]) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
