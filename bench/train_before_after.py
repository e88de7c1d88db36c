"""Our training loops before and after a change, in one run: reward model, DPO and PPO on a git revision and on this tree.

    .venv/bin/python bench/train_before_after.py ce09b32 --rounds 2

The revision is checked out into a temporary git worktree that shares this tree's virtual
environment. The two trees then take turns (before, after, before, after, ...) running the same
three one-process runs on the same data, each in a fresh process, so a drift in the machine's
load hits both sides:

* reward model: all-minilm-l6-v2, 400 pairs (bench/reward_vs_trl.py's mix), batch 16, 1 epoch;
* DPO: SmolLM2-135M-Instruct, 64 pairs (bench/dpo_vs_trl.py's), batch 4, 6 steps, max length 1024;
* PPO: SmolLM2-135M-Instruct against a rule reward, 3 steps of 8 rollouts of 16 tokens.

Each row is the best of the rounds (training throughput as the library reports it); the ratio
is after / before, above 1 meaning faster. Writes the table to stdout and
``bench/out/train_before_after.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

# Run inside each tree (cwd and sys.path = that tree): one job, its figure printed as JSON.
JOB = r"""
import json, sys, tempfile
kind, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = tempfile.mkdtemp() + "/out"
if kind == "reward_model":
    from rewardmodel.lib.config import RewardConfig
    from rewardmodel.lib.data import read_pairs
    from rewardmodel.lib.train import train_reward_model
    config = RewardConfig(backbone="all-minilm-l6-v2", batch_size=16, epochs=1.0, max_length=384,
                          learning_rate=1e-4, num_threads=threads, device="cpu")
    m = train_reward_model(config, read_pairs(data), out).metrics
    figure = {"tokens_per_s": m["tokens_per_s"], "pairs_per_s": m["pairs_per_s"]}
elif kind == "dpo":
    from rewardmodel.lib.data import read_pairs
    from training.lib.dpo import DPOConfig, train_dpo
    config = DPOConfig(model="smollm2", batch_size=4, max_steps=6, max_length=1024, learning_rate=5e-6,
                       num_threads=threads, device="cpu")
    m = train_dpo(config, read_pairs(data), out).metrics
    figure = {"tokens_per_s": m["tokens_per_s"], "pairs_per_s": m["pairs_per_s"],
              "tokens_per_s_with_reference": m["tokens_per_s_with_reference"]}
else:
    from training.lib.ppo import PPOConfig, train_ppo
    prompts = [json.loads(line)["messages"] for line in open(data) if line.strip()][:32]
    config = PPOConfig(model="smollm2", reward="rule:count:the", steps=3, batch_size=8, mini_batch_size=4,
                       ppo_epochs=2, max_new_tokens=16, num_threads=threads, device="cpu")
    m = train_ppo(config, prompts, out).metrics
    figure = {"episodes_per_s": 24 / m["train_seconds"]}
print("FIGURE " + json.dumps(figure))
"""
KINDS = ("reward_model", "dpo", "ppo")


def one(tree: Path, kind: str, data: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", JOB, kind, str(data), str(threads)],
                          cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} in {tree} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("FIGURE "))
    return json.loads(line.removeprefix("FIGURE "))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", help="the 'before' revision (a commit, a tag, a branch)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(KINDS))
    args = parser.parse_args(argv)
    kinds = [k for k in args.only.split(",") if k]
    OUT.mkdir(parents=True, exist_ok=True)
    from bench import dpo_vs_trl, reward_vs_trl

    work = Path(tempfile.mkdtemp(prefix="train-before-after-"))
    data = {
        "reward_model": work / "rm.jsonl",
        "dpo": work / "dpo.jsonl",
        "ppo": ROOT / "data" / "demo" / "prompts.jsonl",
    }
    data["reward_model"].write_text("".join(json.dumps(p) + "\n" for p in reward_vs_trl.make_pairs(400, 0)[0]))
    data["dpo"].write_text("".join(json.dumps(p) + "\n" for p in dpo_vs_trl.make_pairs(64, 0)[0]))
    commit = subprocess.run(["git", "rev-parse", "--short", args.revision], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    before_tree = work / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), commit], cwd=ROOT, check=True,
                   capture_output=True)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for number in range(1, args.rounds + 1):
            for kind in kinds:
                for side, tree in (("before", before_tree), ("after", ROOT)):
                    print(f"round {number}: {kind} {side}", flush=True)
                    results.setdefault((kind, side), []).append(one(tree, kind, data[kind], args.threads))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    lines = [
        f"# Our training loops before ({commit}) and after (HEAD {head.strip()} plus any changes), one process each",
        "",
        f"- command: `.venv/bin/python bench/train_before_after.py {' '.join(argv)}`",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.threads} threads per run",
        f"- best of {args.rounds} alternating rounds per side; ratio = after / before (above 1: faster)",
        "",
        "| run | figure | before | after | ratio |",
        "|---|---|---|---|---|",
    ]
    for kind in kinds:
        before, after = results[(kind, "before")], results[(kind, "after")]
        for key in before[0]:
            b, a = max(r[key] for r in before), max(r[key] for r in after)
            lines.append(f"| {kind} | {key} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    text = "\n".join(lines) + "\n"
    (OUT / "train_before_after.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
