"""bench/run_all.py --collect-only on a fresh clone: docs/benchmarks.md keeps every section and figure.

bench/out/ (the raw outputs) is ignored by git, so a fresh clone has none; the page must come
out of the committed files alone. Nothing here runs a benchmark.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"\d[\d,.]*\d|\d")


def fresh_clone(tmp_path: Path) -> Path:
    """The committed files the collect step reads, laid out as in a clone (no bench/out/)."""
    clone = tmp_path / "clone"
    for source in [ROOT / "bench" / "run_all.py", ROOT / "docs" / "benchmarks.md", *(ROOT / "bench").rglob("*.md")]:
        relative = source.relative_to(ROOT)
        if relative.parts[:2] == ("bench", "out") or relative.parts[1].startswith(".venv"):
            continue  # ignored by git: not in a clone
        (clone / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, clone / relative)
    assert not (clone / "bench" / "out").exists()
    return clone


def collect(clone: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/run_all.py", "--collect-only"], cwd=clone,
                          capture_output=True, text=True, timeout=60)


def sections(page: str) -> dict[str, str]:
    found, heading, fenced = {}, None, False
    for line in page.splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("## ") and not fenced:
            heading = line
            found.setdefault(heading, "")
        elif heading is not None:
            found[heading] += line + "\n"
    return found


def test_collect_on_a_fresh_clone_keeps_every_section_and_its_numbers(tmp_path):
    clone = fresh_clone(tmp_path)
    before = sections((clone / "docs" / "benchmarks.md").read_text())
    assert len(before) > 10

    result = collect(clone)

    assert result.returncode == 0, result.stderr
    assert "no longer on the page" not in result.stderr, result.stderr
    after = sections((clone / "docs" / "benchmarks.md").read_text())
    assert [h for h in before if h not in after] == []
    for heading, text in before.items():
        lost = Counter(NUMBER.findall(text)) - Counter(NUMBER.findall(after[heading]))
        assert not lost, f"{heading}: figures lost {sorted(lost)}"
        assert ("Not measured yet" in after[heading]) <= ("Not measured yet" in text), heading


def test_a_newer_raw_report_replaces_its_section_and_becomes_the_committed_one(tmp_path):
    clone = fresh_clone(tmp_path)
    committed = clone / "bench" / "reports" / "export.md"
    old_heading = "## " + committed.read_text().splitlines()[0].removeprefix("# ")
    (clone / "bench" / "out").mkdir()
    fresh = clone / "bench" / "out" / "export.md"
    fresh.write_text("# Export benchmark (sqlite, 2 CPUs)\n\n| votes | seconds |\n|---|---|\n| 100,000 | 1.23 |\n")
    stale = clone / "bench" / "out" / "loop.md"
    stale.write_text("# The loop, an old run\n\nwin rate 3%\n")
    kept = committed.stat().st_mtime
    os.utime(fresh, (kept + 60, kept + 60))
    os.utime(stale, (kept - 60, kept - 60))  # older than the committed copy: ignored

    result = collect(clone)

    assert result.returncode == 0, result.stderr
    page = (clone / "docs" / "benchmarks.md").read_text()
    assert "| 100,000 | 1.23 |" in page and old_heading in page
    assert committed.read_text() == fresh.read_text()
    assert "win rate 3%" not in page and "The loop, an old run" not in page
    assert "## The loop on the demo project" in page
