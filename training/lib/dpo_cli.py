"""Command line for DPO without the web app.

    python -m training.lib.dpo --data pairs.jsonl --model smollm2 --out DIR [--beta 0.1 --lora ...]

Every `DPOConfig` field is an option (``--max-steps``, ``--lora-r``, ...;
booleans as ``--lora`` / ``--no-lora``, ``--lora-target-modules`` as a
comma-separated list). ``--lineage`` takes a JSON object recorded in the
checkpoint's meta.json. A tqdm bar shows the steps; the result's metrics are
printed as JSON at the end. On several GPUs, start it with torchrun
(``torchrun --standalone --nproc-per-node 4 -m training.lib.dpo ...``): each
process trains its share of every batch, rank 0 shows the bar and publishes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from rewardmodel.lib.data import read_pairs
from rewardmodel.lib.ranks import exit_rank, join, leave
from rewardmodel.lib.runtime import add_config_options
from training.lib.distributed import agreed_mode
from training.lib.dpo import DPOConfig, train_dpo

_HELP = {
    "model": "alias (smollm2), local folder or hub id",
    "loss": "sigmoid | ipo | robust",
    "max_steps": "optimizer steps (overrides --epochs)",
    "lora_target_modules": "comma-separated module names, or all-linear",
    "dtype": "auto | fp32 | bf16 (bf16 only on a GPU)",
    "shared_prefix": "auto | on | off",
    "weights": "auto (bf16 base: bf16 on a bf16 GPU, fp32 elsewhere) | fp32 | checkpoint (the base's dtype anywhere)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.lib.dpo", description="DPO from a preference snapshot.")
    parser.add_argument("--data", required=True, help="JSONL of pairs (our snapshot format or TRL's)")
    parser.add_argument("--out", required=True, help="checkpoint folder to create (must not exist or be empty)")
    parser.add_argument("--lineage", default="{}", help="JSON object recorded in meta.json")
    parser.add_argument("--model", default="smollm2", help=_HELP["model"])
    add_config_options(parser, DPOConfig, skip={"model"}, help=_HELP)
    return parser


def config_from_args(args: argparse.Namespace) -> DPOConfig:
    values: dict[str, Any] = {f.name: getattr(args, f.name) for f in dataclasses.fields(DPOConfig)}
    targets = values["lora_target_modules"]
    if isinstance(targets, str) and "," in targets:
        values["lora_target_modules"] = tuple(t.strip() for t in targets.split(",") if t.strip())
    return DPOConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = config_from_args(args)
    lineage = json.loads(args.lineage)
    if not isinstance(lineage, dict):
        raise SystemExit("--lineage must be a JSON object")
    pairs = read_pairs(args.data)
    team = join(config.device)  # one rank alone unless torchrun started this process
    config = agreed_mode(config, "dpo", team)  # "auto" on several GPUs: every rank trains the same way
    bar = tqdm(total=None, unit="step", desc="dpo", dynamic_ncols=True, disable=not team.main)

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", margin=f"{metrics['margin']:.3f}",
                        acc=f"{metrics['accuracy']:.2f}", tok_s=f"{metrics['tokens_per_s']:.0f}")

    try:
        result = train_dpo(config, pairs, args.out, progress, lineage={"data": args.data, **lineage})
        team.barrier()  # no rank tears its connections down while rank 0 still publishes
    finally:
        bar.close()
        leave()
    if not team.main:
        return 0
    json.dump({"checkpoint": result.checkpoint_path, "metrics": result.metrics}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    exit_rank(main())
