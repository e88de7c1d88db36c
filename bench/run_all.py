"""make bench: run every benchmark one after another, then collect their reports into docs/benchmarks.md.

    .venv/bin/python bench/run_all.py [--only vote_http,export] [--collect-only]

Each benchmark writes bench/out/<name>.md (peer and ours side by side, the command,
the machine). They run one at a time because they share two cores: run nothing
else meanwhile, or the figures mean little.

bench/out/ is not committed; bench/reports/<name>.md is. A benchmark that finishes here
has its report copied there (so does a bench/out/<name>.md newer than the committed copy,
e.g. from running one script by hand), and docs/benchmarks.md is built from committed
files only: the header below, bench/goals.md, bench/reports/, bench/cpu/ and bench/gpu/.
A fresh clone therefore regenerates the same page. Notes added to a section by hand belong
in its bench/reports/ file; a re-run of that benchmark replaces them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"  # raw outputs, ignored by git
REPORTS = ROOT / "bench" / "reports"  # their committed copies, which the page is built from
PAGE = ROOT / "docs" / "benchmarks.md"
PY = sys.executable
os.environ.setdefault("LOCAL_SECRET_KEY", "1")  # the benchmarks run with DEBUG off: a key of their own

BENCHMARKS = {
    "vote_http": [PY, "bench/vote_http.py"],
    "vote_http-granian": [PY, "bench/vote_http.py", "--server", "granian", "--workers", "2", "--threads", "4",
                          "--out", "bench/out/vote_http-granian.md"],
    "export": [PY, "bench/export.py", "--votes", "100000"],
    "reward_vs_trl": [PY, "bench/reward_vs_trl.py", "--repeat", "2"],
    "reward_vs_trl-smollm2": [PY, "bench/reward_vs_trl.py", "--smollm2", "--pairs", "120", "--epochs", "1",
                              "--batch-size", "8", "--max-length", "384", "--runs", "ours,trl-fp32"],
    # The same data mix as the all-MiniLM-L6-v2 row (demo pairs topped up with synthetic ones of
    # mixed lengths), at the learning rate of the GPU runs.
    "reward_vs_trl-smollm2-135m-instruct-400-pairs-lr-3e-5": [
        PY, "bench/reward_vs_trl.py", "--smollm2", "--pairs", "400", "--epochs", "1", "--batch-size", "8",
        "--max-length", "384", "--lr", "3e-5", "--runs", "ours,trl-fp32",
        "--model-name", "SmolLM2-135M-Instruct, 400 pairs, lr 3e-5"],
    "dpo_vs_trl": [PY, "bench/dpo_vs_trl.py", "--paired", "--threads", "1", "--runs", "trl-best,trl-fp32"],
    "dpo_vs_trl-tiny": [PY, "bench/dpo_vs_trl.py", "--tiny", "--steps", "8"],
    "ppo_vs_trl": [PY, "bench/ppo_vs_trl.py"],
    "ppo_vs_trl-smollm2": [PY, "bench/ppo_vs_trl.py", "--model", "smollm2", "--prompts", "32", "--steps", "3",
                           "--batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "2",
                           "--max-new-tokens", "16", "--runs", "ours,trl-best"],
    "sharded_sampling": [PY, "bench/sharded_sampling.py"],
    "loop": [PY, "bench/loop.py"],
    "reliability": [PY, "bench/reliability.py", "--seeds", "0,1,2", "--overlap", "3,5"],
    "split_topology": [PY, "bench/split_topology.py"],
    "active": [PY, "bench/active.py"],
    # Restarts the machine's PostgreSQL part way: nothing else may use it meanwhile.
    "soak": [PY, "bench/soak.py"],
}

HEADER = """# Benchmarks

Every figure here comes from a script under `bench/` (`make bench` runs them all, one at a
time, copies their reports to `bench/reports/` and rewrites this page from the committed
reports). Each script runs the peer it is measured against side by side in the same process
tree. On a CPU-only 2-core machine absolute times say little; the ratios are the point, and
they move with the CPU, which changes between sessions: quote a ratio together with its
machine. GPU figures (with MFU) are measured only when a GPU is lent to a session. Reports
from another CPU or a lent GPU are kept in `bench/cpu/` and `bench/gpu/` and appended at the
end of this page.

Each section says how it was run. The DPO comparison runs each TRL configuration at the same
time as one of ours, one thread each, and compares them over the window where both were
training, so load from anything else hits both sides alike. The reward-model comparison runs
the two one after the other, best of alternating repeats.

The sections from `bench/reports/` were measured on 2026-11-22 on a quiet machine (an AMD EPYC
without bf16 instructions; load below 2), one benchmark at a time. The reward model and the
granian vote bench were measured again on 2026-12-04 on an Intel Xeon with AMX (`bench/cpu/`).
In a later session that day, on an AMD EPYC (Zen 4), the reward model was measured again
(`bench/cpu/`), and its CUDA-graphed steps on a lent H200 (`bench/gpu/`).

"""


def promote(name: str, *, if_newer: bool) -> bool:
    """Copy bench/out/<name>.md over its committed report (only when newer, if ``if_newer``); True if copied."""
    fresh, kept = OUT / f"{name}.md", REPORTS / f"{name}.md"
    if not fresh.exists() or (if_newer and kept.exists() and fresh.stat().st_mtime <= kept.stat().st_mtime):
        return False
    REPORTS.mkdir(parents=True, exist_ok=True)
    kept.write_text(fresh.read_text().strip() + "\n")
    return True


def sections(page: str) -> dict[str, str]:
    """The page's ``## `` sections by heading line, each up to the next ``## `` heading (fences respected)."""
    found: dict[str, str] = {}
    heading, lines, fenced = None, [], False
    for line in page.splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("## ") and not fenced:
            if heading is not None:
                found.setdefault(heading, "\n".join(lines).strip())
            heading, lines = line, []
        lines.append(line)
    if heading is not None:
        found.setdefault(heading, "\n".join(lines).strip())
    return found


def collect() -> list[str]:
    """Rewrite docs/benchmarks.md from the committed files; return the headings of the old page it lacks."""
    old = sections(PAGE.read_text()) if PAGE.exists() else {}
    parts = [HEADER]
    # A hand-kept summary of the goals across reports (it quotes them; re-read it after a run).
    goals = ROOT / "bench" / "goals.md"
    if goals.exists():
        parts.append(goals.read_text().strip() + "\n")
    for name in BENCHMARKS:
        report = REPORTS / f"{name}.md"
        if report.exists():
            body = report.read_text().strip()
            # Demote the report's own title one level under this page's.
            parts.append(("#" + body if body.startswith("# ") else body) + "\n")
        elif f"## {name}" in old:  # never reported: keep what the page says
            parts.append(old[f"## {name}"] + "\n")
        else:
            parts.append(f"## {name}\n\nNot measured yet: `{' '.join(BENCHMARKS[name][1:])}`.\n")
    # Reports measured on another CPU or a lent GPU: this machine cannot re-run them, so they
    # are kept in the repository.
    for report in sorted((ROOT / "bench" / "cpu").glob("*.md")) + sorted((ROOT / "bench" / "gpu").glob("*.md")):
        parts.append("#" + report.read_text().strip().replace("\n#", "\n##") + "\n")
    page = "\n".join(parts)
    PAGE.write_text(page)
    return [heading for heading in old if heading not in sections(page)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--collect-only", action="store_true",
                        help="run nothing; take bench/out/ reports newer than their committed copies")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    failed, promoted = [], []
    if not args.collect_only:
        for name in names:
            print(f"== {name}: {' '.join(BENCHMARKS[name][1:])}", flush=True)
            started = time.perf_counter()
            code = subprocess.call(BENCHMARKS[name], cwd=ROOT)
            print(f"== {name} finished in {time.perf_counter() - started:.0f} s (exit {code})", flush=True)
            if code:
                failed.append(name)
            elif promote(name, if_newer=False):
                promoted.append(name)
    else:
        promoted = [name for name in BENCHMARKS if promote(name, if_newer=True)]
    if promoted:
        print(f"copied to bench/reports/: {', '.join(promoted)}")
    dropped = collect()
    print(f"wrote docs/benchmarks.md{'; failed: ' + ', '.join(failed) if failed else ''}")
    if dropped:
        print("sections no longer on the page (check git diff docs/benchmarks.md): " + "; ".join(dropped),
              file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
