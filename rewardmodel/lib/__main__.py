"""Command line for the reward-model library, without the web app.

    python -m rewardmodel.lib train --data pairs.jsonl --backbone all-minilm-l6-v2 --out DIR [--epochs 2 ...]
    python -m rewardmodel.lib score --model DIR --data pairs.jsonl   # prints chosen/rejected rewards as JSONL

Every `RewardConfig` field is an option (`--learning-rate`, `--loss davidson`,
`--use-margin` / `--no-use-margin`, ...). Training shows a tqdm progress bar
and prints the final metrics as JSON. On several GPUs, start it with torchrun
(`torchrun --standalone --nproc-per-node 4 -m rewardmodel.lib train ...`): each
process trains its share of every batch, rank 0 shows the bar and saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.data import read_pairs
from rewardmodel.lib.model import load_reward_model
from rewardmodel.lib.ranks import exit_rank, join, leave
from rewardmodel.lib.runtime import add_config_options
from rewardmodel.lib.score import score
from rewardmodel.lib.train import train_reward_model
from training.lib.distributed import agreed_mode


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _train(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(RewardConfig)}
    config = RewardConfig(**{k: v for k, v in vars(args).items() if k in names})
    pairs = read_pairs(args.data)
    team = join(config.device)  # one rank alone unless torchrun started this process
    config = agreed_mode(config, "reward_model", team)  # "auto" on several GPUs: every rank trains the same way
    bar = tqdm(total=None, unit="step", desc="reward model", dynamic_ncols=True, disable=not team.main)

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.3f}",
                        pairs_s=f"{metrics['pairs_per_s']:.1f}")

    try:
        result = train_reward_model(config, pairs, args.out, progress, snapshot_sha256=file_sha256(args.data))
        team.barrier()  # no rank tears its connections down while rank 0 still publishes
    finally:
        bar.close()
        leave()
    if team.main:
        print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def _score(args: argparse.Namespace) -> int:
    model = load_reward_model(args.model)
    pairs = read_pairs(args.data)
    prompts = [p.prompt for p in pairs]
    chosen = score(model, prompts, [p.chosen for p in pairs], args.batch_size)
    rejected = score(model, prompts, [p.rejected for p in pairs], args.batch_size)
    for c, r in zip(chosen, rejected, strict=True):
        print(json.dumps({"chosen": c, "rejected": r}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewardmodel.lib", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a reward model from a JSONL snapshot")
    train.add_argument("--data", required=True, help="JSONL pairs (snapshot or TRL format)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--backbone", required=True, help="folder, hub id, or alias (all-minilm-l6-v2, smollm2)")
    add_config_options(train, RewardConfig, skip={"backbone"})
    train.set_defaults(run=_train)
    scorer = commands.add_parser("score", help="score the pairs of a JSONL file with a saved model")
    scorer.add_argument("--model", required=True)
    scorer.add_argument("--data", required=True)
    scorer.add_argument("--batch-size", type=int, default=32)
    scorer.set_defaults(run=_score)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    exit_rank(main())
