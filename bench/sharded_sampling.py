"""Sharded PPO's sampling: the whole policy gathered once per rollout batch against one layer gathered per token.

    .venv/bin/python bench/sharded_sampling.py [--shape smollm2|tiny] [--ranks 2] [--new-tokens 32] [--rounds 3]

Two CPU processes (gloo on 127.0.0.1, one thread each) shard the same randomly initialised causal
LM with `training.lib.sharding.shard_policy` (FSDP2, as a sharded PPO run does) and sample the same
rollouts with `ShardedPolicy.generate` both ways, taking turns (lean, gathered, lean, ...; best of
the rounds):

* lean (``gather_for_sampling=False``, the only way before): each decoder layer is all-gathered at
  every new token and freed after its forward: layers x new tokens all-gathers;
* gathered (``gather_for_sampling=True``, the default where every GPU has room, as TRL's
  ``ds3_gather_for_generation``): each layer is gathered at the first new token and kept until
  the batch ends.

Shape of the data: every rank samples 4 prompts of 12 tokens, all the same length (no padding),
with EOS switched off so every row runs to ``--new-tokens``; the speed-up grows with the number
of layers and of new tokens, not with padding. The samples of both ways must be token-identical
(checked). Writes the table to stdout and ``bench/out/sharded_sampling.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

SHAPES = {  # LlamaConfig keyword arguments; "smollm2" is SmolLM2-135M's shape
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}
PROMPTS, PROMPT_TOKENS = 4, 12


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, results: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.lib.sharding import reshard, shard_policy

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[args.shape], max_position_embeddings=4096)).eval()
    sharded = shard_policy(model, torch.device("cpu"))
    ids = torch.randint(3, model.config.vocab_size, (PROMPTS, PROMPT_TOKENS), generator=torch.Generator().manual_seed(rank))
    settings = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "do_sample": True, "top_k": 0,
                "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "pad_token_id": 0,
                "eos_token_id": None}
    best = {False: float("inf"), True: float("inf")}
    samples: dict[bool, torch.Tensor] = {}
    for _ in range(args.rounds):
        for gather in (False, True):
            torch.manual_seed(7 + rank)
            torch.distributed.barrier()
            start = time.perf_counter()
            with torch.no_grad():
                samples[gather] = sharded.generate(gather=gather, **settings)
            reshard(sharded)
            torch.distributed.barrier()
            best[gather] = min(best[gather], time.perf_counter() - start)
    same = torch.tensor(int(torch.equal(samples[False], samples[True])))
    torch.distributed.all_reduce(same, op=torch.distributed.ReduceOp.MIN)
    if rank == 0:
        Path(results).write_text(f"{best[False]} {best[True]} {int(same)}")
    torch.distributed.destroy_process_group()


def _cpu() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT / "sharded_sampling.md")
    args = parser.parse_args()
    import torch.multiprocessing

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, "results")
        torch.multiprocessing.spawn(_rank, args=(args.ranks, port, args, results), nprocs=args.ranks)
        lean, gathered, same = Path(results).read_text().split()
    tokens = args.ranks * PROMPTS * args.new_tokens
    layers = SHAPES[args.shape]["num_hidden_layers"]
    command = " ".join(["bench/sharded_sampling.py", *sys.argv[1:]])
    report = f"""## Sharded PPO sampling: the policy gathered once per batch against a layer per token

`.venv/bin/python {command}`; {args.ranks} CPU processes (gloo), one thread each; a random
{args.shape} shape ({layers} decoder layers) sharded with FSDP2; each rank samples {PROMPTS} prompts
of {PROMPT_TOKENS} tokens to exactly {args.new_tokens} new tokens (no padding, no early EOS); best of
{args.rounds} alternating rounds.

| sampling | seconds | new tokens/s (all ranks) | all-gathers per decoder layer |
|---|---|---|---|
| lean: a layer gathered per new token (before) | {float(lean):.2f} | {tokens / float(lean):.1f} | {args.new_tokens} |
| gathered once for the batch (`gather_for_sampling`, default) | {float(gathered):.2f} | {tokens / float(gathered):.1f} | 1 |

**{float(lean) / float(gathered):.2f}x** the lean way's tokens/s; the samples of both ways are
{"token-identical" if same == "1" else "NOT identical (a defect)"}. On GPUs the lean way's cost is
the all-gathers over NVLink and the gathered way's the whole policy's memory in its compute dtype
(2 bytes per parameter in bf16), which a run takes only where every GPU has room for it.

- machine: {_cpu()}, {os.cpu_count()} cores, torch {torch.__version__}; measured {time.strftime("%Y-%m-%d", time.gmtime())}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    if same != "1":
        sys.exit(1)


if __name__ == "__main__":
    main()
