"""Reward-model training speed and accuracy: rewardmodel.lib vs TRL RewardTrainer.

    .venv/bin/python bench/reward_vs_trl.py --pairs 400            # all-MiniLM-L6-v2
    .venv/bin/python bench/reward_vs_trl.py --pairs 200 --backbone smollm2
    python bench/reward_vs_trl.py --device cuda --pairs 4000 --batch-size 64 --runs ours-bf16,trl-bf16,...

Both sides get the same backbone, the same training pairs, the same held-out
pairs (split by prompt), batch size, learning rate, epochs, schedule and
seed. Each run is its own subprocess (fresh peak-RSS figure), one after the
other so they never share the CPU. Variants (see VARIANTS): ours in fp32 and
in bf16 autocast; TRL with bf16=False and with bf16=True, both without
gradient checkpointing (its fastest settings; these train fully and are the
peers); on a GPU also both in fp32 with TF32 matmuls (our GPU default, TRL's
tf32=True), and TRL's two gradient-checkpointing settings, its default included
(steps capped: they only show what checkpointing costs). bf16 pays only on a
CPU with bf16 instructions (AVX512-BF16 or AMX, where a bf16 matmul runs ~4x
faster than fp32; some of the machines these benchmarks ran on have them,
some do not); elsewhere it crawls, so the full bf16 rows are skipped and
TRL's bf16 default gets --capped-timeout seconds.

Data: pairs of completions of the same prompt from data/demo/completions.jsonl
when it exists (labelled by a structure rule: more list items, then
shorter), topped up with synthetic text (labelled by positive minus negative
marker words). 10% of labels are flipped, so ~0.90 is the accuracy ceiling.
Throughput is steady state: from the end of the first optimizer step to the
end of the last, in wall-clock seconds and in CPU seconds of the process
(the latter is robust to other load on a shared machine). "tokens/s" counts
real (non-pad) tokens of both sequences of a pair. Writes
bench/out/reward_vs_trl.md and .json (``-<backbone>`` and ``-cuda`` added to
the name for other backbones and GPU runs).

On a GPU (``--device cuda``) every run trains on the GPU; peak GPU memory
and model FLOPs utilisation (MFU) are added. MFU counts the model FLOPs of
the real tokens only, 6 x (parameters of the backbone's matmuls) per token
plus 12 x layers x hidden x mean sequence length for attention scores,
against ``--peak-tflops`` (989, an H100 SXM's dense bf16 figure, for every
row: one yardstick). ``--random-init`` initialises the backbone from its
config with a fixed seed (saved once, both sides load the same weights):
for throughput where the trained weights cannot be copied to the machine;
its accuracy column then compares two models learning from scratch.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
POSITIVE = "clear helpful correct precise useful thorough accurate kind".split()
NEGATIVE = "wrong vague rude useless confusing incorrect sloppy unclear".split()
FILLER = (
    "the a of to and in is it that for on with as this be are by or from at an was can will your you we our "
    "they their which one more about when there so if has have not but all also how what time data model code "
    "answer question system result value step first then each use make note example user python function file "
    "list number word text line error test run change case point way part work set order need may should would"
).split()


@dataclass(frozen=True)
class Variant:
    """One benchmarked run. `cap` > 0 limits optimizer steps (a throughput-only row, no accuracy)."""

    key: str
    label: str
    library: str  # "ours" or "trl"
    bf16: bool
    checkpointing: bool = False
    cap_flag: str | None = None  # name of the argparse option holding the step cap
    packing: bool = True  # ours only: packed rows (block-diagonal attention) or length-bucketed padded rows
    compile: str | None = None  # ours only: RewardConfig.compile; None = the --compile option
    prefix_sharing: str = "auto"  # ours only: RewardConfig.prefix_sharing (causal backbones)
    tf32: bool = False  # fp32 with TF32 matmuls (GPU only): ours dtype="tf32", TRL tf32=True
    flat_tokens: str = "auto"  # ours only: RewardConfig.flat_tokens (packed backbones; auto = on for the CPU)
    cuda_graphs: str = "auto"  # ours only: RewardConfig.cuda_graphs (GPU only)


VARIANTS = [
    Variant("ours", "rewardmodel.lib fp32 (packed rows)", "ours", bf16=False),
    Variant("ours-tf32", "rewardmodel.lib fp32, TF32 matmuls (packed rows; the GPU default)", "ours", bf16=False,
            tf32=True),
    Variant("ours-bf16", "rewardmodel.lib bf16 autocast (packed rows)", "ours", bf16=True),
    Variant("ours-padded", "rewardmodel.lib fp32 (packed rows, every layer on the padded rows)", "ours", bf16=False,
            flat_tokens="off"),
    Variant("ours-bf16-padded", "rewardmodel.lib bf16 autocast (packed rows, every layer on the padded rows)", "ours",
            bf16=True, flat_tokens="off"),
    Variant("ours-tf32-flat", "rewardmodel.lib fp32, TF32 matmuls (packed rows, per-token layers on real tokens)",
            "ours", bf16=False, tf32=True, flat_tokens="on"),
    Variant("ours-bf16-flat", "rewardmodel.lib bf16 autocast (packed rows, per-token layers on real tokens)", "ours",
            bf16=True, flat_tokens="on"),
    Variant("ours-tf32-graphs", "rewardmodel.lib fp32, TF32 matmuls, CUDA-graphed steps (fixed-width packed rows)",
            "ours", bf16=False, tf32=True, cuda_graphs="on"),
    Variant("ours-bf16-graphs", "rewardmodel.lib bf16 autocast, CUDA-graphed steps (fixed-width packed rows)", "ours",
            bf16=True, cuda_graphs="on"),
    Variant("ours-tf32-eager", "rewardmodel.lib fp32, TF32 matmuls, eager steps (packed rows)", "ours", bf16=False,
            tf32=True, cuda_graphs="off"),
    Variant("ours-bf16-eager", "rewardmodel.lib bf16 autocast, eager steps (packed rows)", "ours", bf16=True,
            cuda_graphs="off"),
    Variant("ours-nopack", "rewardmodel.lib fp32 (bucketed, no packing)", "ours", bf16=False, packing=False),
    Variant("ours-bf16-nopack", "rewardmodel.lib bf16 autocast (bucketed, no packing)", "ours", bf16=True,
            packing=False),
    Variant("ours-bf16-plain", "rewardmodel.lib bf16 autocast (bucketed, no packing, no prefix sharing)", "ours",
            bf16=True, packing=False, prefix_sharing="off"),
    Variant("ours-bf16-compile", "rewardmodel.lib bf16 autocast + torch.compile (packed rows)", "ours", bf16=True,
            compile="on"),
    Variant("trl-fp32", "TRL bf16=False, no grad. ckpt", "trl", bf16=False),
    Variant("trl-tf32", "TRL bf16=False, tf32=True, no grad. ckpt", "trl", bf16=False, tf32=True),
    Variant("trl-bf16", "TRL bf16=True, no grad. ckpt", "trl", bf16=True),
    Variant("trl-fp32-gc", "TRL bf16=False, grad. ckpt on", "trl", bf16=False, checkpointing=True,
            cap_flag="trl_gc_steps"),
    Variant("trl-default", "TRL default (bf16=True, grad. ckpt on)", "trl", bf16=True, checkpointing=True,
            cap_flag="trl_gc_steps"),
]
BY_KEY = {v.key: v for v in VARIANTS}


def marker_oracle(response: str) -> float:
    """Synthetic text: positive minus negative marker words."""
    words = response.lower().split()
    return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)


def structure_oracle(response: str) -> float:
    """Real completions: more list items is better, then shorter (so ties are rare)."""
    items = sum(bool(re.match(r"\s*(\d+[.)]|[-*\u2022])\s", line)) for line in response.splitlines())
    return items - 0.01 * len(response.split())


def _synthetic_response(rng: random.Random) -> str:
    n = int(min(220, max(4, rng.lognormvariate(3.6, 0.8))))  # median ~37 words, long tail
    p_marker = rng.uniform(0.02, 0.2)
    return " ".join(rng.choice(POSITIVE + NEGATIVE) if rng.random() < p_marker else rng.choice(FILLER)
                    for _ in range(n))


def _demo_groups() -> list[tuple[str, list[str]]]:
    """Completions of data/demo/completions.jsonl grouped by prompt (empty when the file is absent)."""
    demo = ROOT / "data" / "demo" / "completions.jsonl"
    groups: dict[str, list[str]] = {}
    if demo.exists():
        for line in demo.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                prompt = row.get("prompt") or ""
                prompt = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
                groups.setdefault(prompt, []).append(row.get("text") or "")
    return [(p, texts) for p, texts in groups.items() if len(set(texts)) >= 2]


def _label(pairs: list[dict], prompt_id: int, prompt: str, a: str, b: str, oracle, rng, noise: float) -> None:
    sa, sb = oracle(a), oracle(b)
    if sa == sb:
        return
    chosen, rejected = (a, b) if sa > sb else (b, a)
    if rng.random() < noise:
        chosen, rejected = rejected, chosen
    pairs.append({"prompt_id": prompt_id, "prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected,
                  "tie": False, "strength": int(min(3, 1 + abs(sa - sb))), "agreement": 1 - noise})


def make_pairs(n_pairs: int, seed: int, noise: float = 0.1) -> tuple[list[dict[str, Any]], str]:
    """Labelled pairs and a description of where they came from.

    Every distinct pair of demo completions of a prompt first (structure
    oracle), then synthetic pairs (marker oracle) up to `n_pairs`.
    """
    rng = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    for prompt_id, (prompt, texts) in enumerate(_demo_groups()):
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if len(pairs) < n_pairs:
                    _label(pairs, prompt_id, prompt, texts[i], texts[j], structure_oracle, rng, noise)
    n_demo = len(pairs)
    prompt_id = 100_000
    while len(pairs) < n_pairs:
        prompt = f"Question {prompt_id}: " + " ".join(rng.choice(FILLER) for _ in range(rng.randint(8, 60))) + "?"
        responses = [_synthetic_response(rng) for _ in range(4)]
        for i, j in ((0, 1), (2, 3), (0, 2)):
            if len(pairs) < n_pairs:
                _label(pairs, prompt_id, prompt, responses[i], responses[j], marker_oracle, rng, noise)
        prompt_id += 1
    return pairs, f"{n_demo} pairs of demo completions (structure oracle), {len(pairs) - n_demo} synthetic (marker oracle)"


def _steady(marks: list[tuple[float, float, float, float]]) -> dict[str, float]:
    """Throughput between the end of the first step and the end of the last.

    marks: (wall s, process CPU s, pairs seen, real tokens seen) after each step.
    Per CPU-second figures are robust to other load on the machine.
    """
    first, last = marks[0] if len(marks) > 1 else (0.0, 0.0, 0.0, 0.0), marks[-1]
    wall, cpu, pairs, tokens = (b - a for a, b in zip(first, last, strict=True))
    return {"pairs_per_s": pairs / wall, "tokens_per_s": tokens / wall, "pairs_per_cpu_s": pairs / cpu}


def run_ours(args: argparse.Namespace, train: list[dict], held_out: list[dict], variant: Variant) -> dict[str, Any]:
    import torch

    from rewardmodel.lib.config import RewardConfig
    from rewardmodel.lib.data import parse_pair
    from rewardmodel.lib.evaluate import predict_pair_rewards, preference_metrics
    from rewardmodel.lib.model import load_reward_model
    from rewardmodel.lib.train import train_reward_model

    config = RewardConfig(backbone=args.backbone, max_length=args.max_length, batch_size=args.batch_size,
                          learning_rate=args.lr, epochs=args.epochs, seed=args.seed, eval_fraction=0.0,
                          dtype="bf16" if variant.bf16 else "tf32" if variant.tf32 else "fp32", device=args.device, packing=variant.packing,
                          compile=variant.compile or args.compile, prefix_sharing=variant.prefix_sharing,
                          flat_tokens=variant.flat_tokens, cuda_graphs=variant.cuda_graphs)
    marks: list[tuple[float, float, float, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()

    def clock(step: int, total: int, m: dict[str, float]) -> None:
        marks.append((time.perf_counter() - t0, time.process_time() - c0, m["pairs_seen"], m["tokens_seen"]))

    result = train_reward_model(config, train, OUT / "work" / variant.key, clock)
    device = torch.device(args.device)
    model = load_reward_model(OUT / "work" / variant.key, device=device)
    encoded = model.formatter.encode([parse_pair(r) for r in held_out], args.max_length)
    chosen, rejected = predict_pair_rewards(model, encoded, batch_size=64, device=device)
    return {**_steady(marks), "steps": len(marks), "padding_fraction": result.metrics["padding_fraction"],
            "cuda_graph_shapes": result.metrics["cuda_graph_shapes"],
            "accuracy": preference_metrics(chosen, rejected, encoded)["accuracy"],
            "train_seconds": result.metrics["train_seconds"], "dropped_pairs": 0}


def run_trl(args: argparse.Namespace, train: list[dict], held_out: list[dict], variant: Variant) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig as TRLConfig
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from rewardmodel.lib.model import resolve_backbone

    path = resolve_backbone(args.backbone)
    tok = AutoTokenizer.from_pretrained(path)
    bf16, checkpointing = variant.bf16, variant.checkpointing
    cap = getattr(args, variant.cap_flag) if variant.cap_flag else -1
    conversational = bool(getattr(tok, "chat_template", None))

    def trl_row(r: dict) -> dict:
        if not conversational:
            return {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
        return {"prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
                "rejected": [{"role": "assistant", "content": r["rejected"].strip()}]}

    stats = {"real": 0, "padded": 0}

    class Recording(DataCollatorForPreference):
        def torch_call(self, examples):  # count real and padded positions of every batch
            out = super().torch_call(examples)
            stats["real"] += int(out["attention_mask"].sum())
            stats["padded"] += out["input_ids"].numel()
            return out

    marks: list[tuple[float, float, float, float]] = []

    base = [0.0, 0.0]

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            base[:] = [time.perf_counter(), time.process_time()]

        def on_step_end(self, a, state, control, **k):
            marks.append((time.perf_counter() - base[0], time.process_time() - base[1],
                          state.global_step * args.batch_size, stats["real"]))

    config = TRLConfig(
        output_dir=str(OUT / "work" / variant.key), per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, num_train_epochs=args.epochs, max_steps=cap, bf16=bf16, tf32=variant.tf32 or None,
        gradient_checkpointing=checkpointing, max_length=args.max_length, seed=args.seed, report_to="none",
        save_strategy="no", logging_steps=10_000, disable_tqdm=True, lr_scheduler_type="linear",
        eos_token=None if tok.eos_token else tok.sep_token,  # BERT tokenizers have no EOS
        use_cpu=args.device == "cpu",
    )
    trainer = RewardTrainer(model=path, args=config, processing_class=tok, callbacks=[Clock()],
                            train_dataset=datasets.Dataset.from_list([trl_row(r) for r in train]),
                            data_collator=Recording(pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id))
    kept = len(trainer.train_dataset)
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    accuracy = float("nan")
    if cap < 0:  # a capped (throughput-only) run has not learned anything worth measuring
        prepared = trainer._prepare_dataset(datasets.Dataset.from_list([trl_row(r) for r in held_out]),
                                            trainer.processing_class, config, "eval")
        collate = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)
        right, model = 0.0, trainer.model.eval()
        with torch.inference_mode():
            for i in range(0, len(prepared), 32):
                batch = collate([prepared[j] for j in range(i, min(i + 32, len(prepared)))])
                ids, mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
                c, r = model(input_ids=ids, attention_mask=mask).logits[:, 0].float().chunk(2)
                right += float((c > r).float().sum() + 0.5 * (c == r).float().sum())
        accuracy = right / max(1, len(prepared))
    return {**_steady(marks), "steps": len(marks), "accuracy": accuracy,
            "padding_fraction": 1 - stats["real"] / max(1, stats["padded"]),
            "train_seconds": train_seconds, "dropped_pairs": len(train) - kept}


def flops_per_token(backbone: str, mean_length: float) -> float:
    """Training FLOPs per real token: 6 x matmul parameters + 12 x layers x hidden x mean length (attention)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from rewardmodel.lib.model import resolve_backbone

    config = AutoConfig.from_pretrained(resolve_backbone(backbone))
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * matmul + 12 * config.num_hidden_layers * config.hidden_size * mean_length


def random_init(backbone: str, seed: int, folder: Path) -> str:
    """Save the backbone's architecture with seeded random weights (fp32) plus its tokenizer; return the folder."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from rewardmodel.lib.model import resolve_backbone

    path = resolve_backbone(backbone)
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return str(folder)


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    data = json.loads((OUT / "work" / "split.json").read_text())
    variant = BY_KEY[args.worker]
    run = run_ours if variant.library == "ours" else run_trl
    result = run(args, data["train"], data["eval"], variant)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device != "cpu":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    result["flops_per_token"] = flops_per_token(args.backbone, result["tokens_per_s"] / max(1e-9, 2 * result["pairs_per_s"]))
    (OUT / "work" / f"{args.worker}.json").write_text(json.dumps(result))


def table(results: dict[str, dict], args: argparse.Namespace, n_train: int, n_eval: int, source: str,
          failures: dict[str, str]) -> str:
    gpu = args.device != "cpu"
    model_name = args.model_name or args.backbone
    lines = [
        f"# Reward model: rewardmodel.lib vs TRL RewardTrainer ({model_name}{', ' + args.device if gpu else ''})",
        "",
        f"{n_train} train pairs, {n_eval} held-out pairs (split by prompt), batch {args.batch_size}, lr {args.lr}, "
        f"epochs {args.epochs}, max_length {args.max_length}, {args.threads} thread(s); full runs are the best of "
        f"{args.repeat} alternating runs. Label ceiling ~0.90 (10% label noise). Data: {source}."
        + (" Weights: random init from the backbone's config (same for both sides)." if args.random_init else ""),
        "",
    ]
    if gpu:
        device_name = next((r["gpu"] for r in results.values() if "gpu" in r), args.device)
        lines[-1:-1] = [f"GPU: {device_name}. MFU against {args.peak_tflops:g} TFLOP/s (dense bf16) for every row.", ""]
        lines += ["| run | pairs/s | real tokens/s | model TFLOP/s | MFU | padding | peak GPU MiB | held-out acc. | "
                  "steps | train s | dropped |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| run | pairs/s | pairs per CPU-s | real tokens/s | padding | peak RSS MiB | held-out acc. | steps | "
                  "train s | dropped |", "|---|---|---|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        if variant.key in failures:
            lines.append(f"| {variant.label} | {failures[variant.key]} |" + " |" * (10 if gpu else 9))
        if variant.key not in results:
            continue
        r = results[variant.key]
        acc = "n/a (capped)" if r["accuracy"] != r["accuracy"] else f"{r['accuracy']:.3f}"
        if gpu:
            tflops = r["tokens_per_s"] * r["flops_per_token"] / 1e12
            lines.append(
                f"| {variant.label} | {r['pairs_per_s']:.1f} | {r['tokens_per_s']:.0f} | {tflops:.1f} | "
                f"{tflops / args.peak_tflops:.1%} | {r['padding_fraction']:.1%} | {r['peak_gpu_mib']:.0f} | {acc} | "
                f"{r['steps']} | {r['train_seconds']:.1f} | {r['dropped_pairs']} |"
            )
            continue
        lines.append(
            f"| {variant.label} | {r['pairs_per_s']:.2f} | {r['pairs_per_cpu_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['padding_fraction']:.1%} | {r['peak_rss_mib']:.0f} | {acc} | {r['steps']} | "
            f"{r['train_seconds']:.1f} | {r['dropped_pairs']} |"
        )
    lines.append("")
    full_trl = [k for k in results if BY_KEY[k].library == "trl" and not BY_KEY[k].cap_flag]
    for ours, peer in (("ours", "trl-fp32"), ("ours-tf32", "trl-tf32"), ("ours-bf16", "trl-bf16"), ("ours-nopack", "trl-fp32"),
                       ("ours-bf16-nopack", "trl-bf16"), ("ours-bf16-plain", "trl-bf16")):
        if ours in results and peer in results:
            lines.append(f"- {BY_KEY[ours].label} vs {BY_KEY[peer].label}: "
                         f"**{results[ours]['pairs_per_s'] / results[peer]['pairs_per_s']:.2f}x** pairs/s, "
                         f"{results[ours]['pairs_per_cpu_s'] / results[peer]['pairs_per_cpu_s']:.2f}x per CPU-s.")
    ours_keys = [k for k in results if BY_KEY[k].library == "ours"]
    if ours_keys and full_trl:
        best_ours = max(ours_keys, key=lambda k: results[k]["pairs_per_s"])
        best_trl = max(full_trl, key=lambda k: results[k]["pairs_per_s"])
        lines.append(f"- fastest vs fastest ({BY_KEY[best_ours].label} vs {BY_KEY[best_trl].label}): "
                     f"**{results[best_ours]['pairs_per_s'] / results[best_trl]['pairs_per_s']:.2f}x** pairs/s.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--backbone", default="all-minilm-l6-v2")
    parser.add_argument("--smollm2", action="store_true", help="shorthand for --backbone smollm2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl-gc-steps", type=int, default=8,
                        help="step cap of the TRL runs with gradient checkpointing (-1: none); they only show its cost")
    parser.add_argument("--capped-timeout", type=int, default=300, help="seconds a capped run may take")
    parser.add_argument("--runs", default=",".join(v.key for v in VARIANTS), help="comma-separated variant keys")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the full runs this many times, keep the best")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where every run trains")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="torch.compile for our runs")
    parser.add_argument("--run-timeout", type=int, default=None, help="seconds any full run may take")
    parser.add_argument("--random-init", action="store_true",
                        help="seeded random weights from the backbone's config (throughput where weights cannot travel)")
    parser.add_argument("--model-name", default=None, help="name for the report (default: the backbone)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smollm2:
        args.backbone = "smollm2"
    if args.worker:
        return worker(args)

    from rewardmodel.lib.data import parse_pair, split_by_prompt

    (OUT / "work").mkdir(parents=True, exist_ok=True)
    pairs, source = make_pairs(args.pairs, args.seed)
    train_p, eval_p = split_by_prompt([parse_pair(r) for r in pairs], 0.2, args.seed)
    held = {p.group_key() for p in eval_p}
    split = {"train": [r for r in pairs if parse_pair(r).group_key() not in held],
             "eval": [r for r in pairs if parse_pair(r).group_key() in held]}
    (OUT / "work" / "split.json").write_text(json.dumps(split))
    if args.random_init:
        args.model_name = args.model_name or f"{Path(args.backbone).name} architecture, random init"
        args.backbone = random_init(args.backbone, args.seed, OUT / "work" / "init")
    passthrough = [f"--backbone={args.backbone}", f"--batch-size={args.batch_size}", f"--lr={args.lr}",
                   f"--device={args.device}", f"--compile={args.compile}",
                   f"--epochs={args.epochs}", f"--max-length={args.max_length}", f"--seed={args.seed}",
                   f"--threads={args.threads}", f"--trl-gc-steps={args.trl_gc_steps}"]
    every: dict[str, list[dict]] = {}
    # Full-length runs alternate `--repeat` times (ours, TRL, ours, TRL, ...) and
    # the fastest of each is kept, so a burst of load from other processes on a
    # shared machine hurts neither side more than the other.
    keys = args.runs.split(",")
    from rewardmodel.lib.runtime import cpu_has_native_bf16

    if args.device == "cpu":
        # TF32 is a GPU matmul mode, and CUDA graphs a GPU feature.
        keys = [k for k in keys if not BY_KEY[k].tf32 and BY_KEY[k].cuda_graphs != "on"]
    if args.device == "cpu" and not cpu_has_native_bf16():
        keys = [k for k in keys if not BY_KEY[k].bf16 or BY_KEY[k].key == "trl-default"]
    full = [k for k in keys if not BY_KEY[k].cap_flag]
    order = [k for _ in range(args.repeat) for k in full] + [k for k in keys if k not in full]
    failures: dict[str, str] = {}
    for key in order:
        print(f"running {key} ...", flush=True)
        # A capped run only shows what a setting costs; bf16 without bf16 instructions can take
        # many minutes a step, so it gets a time limit and a row saying it ran out of time.
        timeout = args.capped_timeout if BY_KEY[key].cap_flag else args.run_timeout
        started = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, __file__, *passthrough, "--worker", key], cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            what = f"{getattr(args, BY_KEY[key].cap_flag)} steps" if BY_KEY[key].cap_flag else "the run"
            failures[key] = f"did not finish {what} in {timeout} s"
            continue
        finally:
            print(f"{key}: {time.perf_counter() - started:.0f} s in all (load, tokenize, train, evaluate)", flush=True)
        if done.returncode != 0:
            failures[key] = f"failed (exit {done.returncode})"
            continue
        every.setdefault(key, []).append(json.loads((OUT / "work" / f"{key}.json").read_text()))
        write_report(args, every, split, source, failures)  # after every run: a cut-short session keeps the rest
    print(write_report(args, every, split, source, failures))


def write_report(args: argparse.Namespace, every: dict[str, list[dict]], split: dict, source: str,
                 failures: dict[str, str]) -> str:
    """Write bench/out/<name>.md and .json from the runs so far (the fastest of each variant); return the table."""
    results = {key: max(runs, key=lambda r: r["pairs_per_s"]) for key, runs in every.items()}
    report = table(results, args, len(split["train"]), len(split["eval"]), source, failures)
    name = "reward_vs_trl" if args.backbone == "all-minilm-l6-v2" else f"reward_vs_trl-{Path(args.backbone).name.lower()}"
    if args.model_name:
        name = "reward_vs_trl-" + re.sub(r"[^a-z0-9]+", "-", args.model_name.lower()).strip("-")
    name += "" if args.device == "cpu" else f"-{args.device}"
    (OUT / f"{name}.md").write_text(report)
    (OUT / f"{name}.json").write_text(json.dumps({"args": vars(args), "best": results, "all": every}, indent=2))
    return report


if __name__ == "__main__":
    main()
