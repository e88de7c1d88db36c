"""The vote path before and after a change, in one run: ``bench/vote_http.py`` on a git revision and on this tree.

    .venv/bin/python bench/vote_before_after.py 45f2166 --rounds 2 -- --server granian --overlaps 1 --duration 8

Everything after ``--`` goes to ``bench/vote_http.py`` on both sides.

The revision is checked out into a temporary git worktree that shares this tree's virtual
environment; the two trees then take turns (before, after, before, after, ...) with the same
``vote_http.py`` arguments, so a drift in the machine's load hits both sides. Each row of the
final table is the best of the rounds for throughput and CPU per vote; the ratio is after / before
(above 1 for votes/s means faster; below 1 for CPU per vote means cheaper). Writes the table to
stdout and ``bench/out/vote_before_after.md``.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def run(tree: Path, out: Path, args: list[str]) -> dict[tuple[str, str, str], tuple[float, float, float]]:
    """One vote_http.py run; (overlap, cycle, load) → (votes/s, cycle p99 ms, server CPU ms per vote)."""
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "bench/vote_http.py", *args, "--out", str(out)],
                   cwd=tree, check=True)
    rows = {}
    for line in out.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and re.fullmatch(r"\d+", cells[0]):
            cpu = float(cells[9].split("/")[0])
            rows[(cells[0], cells[1], cells[2])] = (float(cells[3]), float(cells[5]), cpu)
    return rows


def best(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: (max(r[k][0] for r in runs), min(r[k][1] for r in runs), min(r[k][2] for r in runs)) for k in keys}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", help="the 'before' revision (a commit, a tag, a branch)")
    parser.add_argument("--rounds", type=int, default=2)
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    args.vote_http_args = rest
    OUT.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", args.revision], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    before_tree = Path(tempfile.mkdtemp(prefix="vote-before-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), commit], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        sides: dict[str, list[dict]] = {"before": [], "after": []}
        for number in range(1, args.rounds + 1):
            for side, tree in (("before", before_tree), ("after", ROOT)):
                print(f"round {number}: {side}", flush=True)
                sides[side].append(run(tree, OUT / f"vote_{side}-{number}.md", args.vote_http_args))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False)
    before, after = best(sides["before"]), best(sides["after"])
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    lines = [
        f"# The vote path before ({commit}) and after (this tree, HEAD {head.strip()} plus any changes)",
        "",
        f"- command: `.venv/bin/python bench/vote_before_after.py {' '.join(argv)}`",
        f"- best of {args.rounds} alternating rounds per side; server CPU is per vote stored",
        "",
        "| overlap | cycle | load | votes/s before / after | ratio | cycle p99 ms before / after "
        "| server CPU ms per vote before / after | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in before:
        if key not in after:
            continue
        (v0, p0, c0), (v1, p1, c1) = before[key], after[key]
        lines.append(f"| {' | '.join(key)} | {v0:.0f} / {v1:.0f} | {v1 / v0:.2f} | {p0:.1f} / {p1:.1f} "
                     f"| {c0:.2f} / {c1:.2f} | {c1 / c0:.2f} |")
    text = "\n".join(lines) + "\n"
    (OUT / "vote_before_after.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
