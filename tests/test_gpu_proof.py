"""bench/gpu/gpu_proof.py runs every stage end to end on tiny random models and reports each one."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_proof_cpu_path_reports_every_stage(tmp_path):
    out, data = tmp_path / "proof.md", tmp_path / "proof.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu/gpu_proof.py", "--tiny", "--threads", "1", "--out", str(out), "--json", str(data)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(data.read_text())
    assert result["failures"] == []
    names = {row["name"].split(" (")[0].split(",")[0] for row in result["rows"]}
    assert {"reward model", "DPO full", "DPO LoRA", "ours", "transformers model.generate"} <= names
    assert any(row["section"] == "big" and row["tokens_per_s"] > 0 for row in result["rows"])
    if importlib.util.find_spec("trl") is not None:
        assert any(row["name"].startswith("TRL DPOTrainer") and row["tokens_per_s"] > 0 for row in result["rows"])
    assert all(row["mfu"] is None for row in result["rows"])  # no GPU peak on a CPU
    report = out.read_text()
    for title in ("A loop round", "TRL DPOTrainer", "Generation tokens/s", "largest model"):
        assert title in report
