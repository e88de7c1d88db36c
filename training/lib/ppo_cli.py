"""Command line for PPO, without the web app.

    python -m training.lib.ppo_cli --model smollm2 --reward-model DIR --prompts prompts.jsonl --out DIR
    python -m training.lib.ppo_cli --model DIR --reward-model rule:count:good --prompts p.jsonl --out DIR --steps 20

``--reward-model`` is a folder written by ``rewardmodel.lib`` or a rule
(``rule:count:WORD``, ``rule:length``). Each line of ``--prompts`` is a JSON
object with ``"messages"`` or ``"prompt"`` (a list of chat messages or a
string, read as one user turn) or a bare JSON list of messages. Every other
``PPOConfig`` field is an option (``--kl-coef``, ``--adaptive-kl``...).
Shows a tqdm progress bar and prints the run's metrics as JSON. Under torchrun
(``torchrun --nproc-per-node=N -m training.lib.ppo_cli ...``) full fine-tuning
shards the policy over the N processes (``--parallel``, see `PPOConfig`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence

from tqdm import tqdm

from rewardmodel.lib.ranks import exit_rank, join, leave
from rewardmodel.lib.runtime import add_config_options
from training.lib.distributed import agreed_mode
from training.lib.generation import read_prompts
from training.lib.ppo import train_ppo
from training.lib.ppo_config import PPOConfig

_OWN_OPTIONS = {"model", "reward"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.lib.ppo_cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="policy: folder, hub id, or alias (smollm2)")
    parser.add_argument("--reward-model", required=True, help="reward-model folder, or rule:count:WORD / rule:length")
    parser.add_argument("--prompts", required=True, help="JSONL prompts")
    parser.add_argument("--out", required=True, help="output folder (must not exist yet)")
    parser.add_argument("--lineage", default="{}", help="JSON object copied into meta.json")
    add_config_options(parser, PPOConfig, skip=_OWN_OPTIONS)
    args = parser.parse_args(argv)

    names = {f.name for f in dataclasses.fields(PPOConfig)} - _OWN_OPTIONS
    config = PPOConfig(model=args.model, reward=args.reward_model,
                       **{k: v for k, v in vars(args).items() if k in names})
    prompts = read_prompts(args.prompts)
    team = join(config.device)  # one rank alone unless torchrun started this process (torchrun ... -m training.lib.ppo_cli)
    config = agreed_mode(config, "ppo", team)  # "auto" on several GPUs: every rank trains the same way
    bar = tqdm(total=config.steps, unit="step", desc="ppo", dynamic_ncols=True, disable=not team.main)

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.2f}",
                        clip=f"{metrics['clip_fraction']:.2f}", eps=f"{metrics['episodes_per_s']:.1f}")

    try:
        result = train_ppo(config, prompts, args.out, progress, lineage=json.loads(args.lineage))
        team.barrier()  # no rank tears its connections down while rank 0 still publishes
    finally:
        bar.close()
        leave()
    if team.main:
        print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    exit_rank(main())
