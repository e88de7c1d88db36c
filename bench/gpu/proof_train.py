"""Training stages of the GPU proof: the loop round's reward model and DPO runs, and DPO against TRL.

Throughput is "real tokens" per second, the figure both libraries log: the non-pad tokens of
both sequences of a pair, the prompt counted twice. MFU divides the FLOPs of the tokens the
model actually computes (ours encodes a shared prompt once, see `computed_share`) by the card's
bf16 peak: 6 x N per token for a full fine-tune (forward + backward), 4 x N with LoRA (the
frozen base computes no weight gradients), N the matmul parameters (`compute_params`).
"""
from __future__ import annotations

import importlib.util
import shutil
import time
from typing import Any

from proof_common import (
    Context,
    Row,
    compute_params,
    mfu,
    peak_gib,
    peak_reserved_gib,
    release,
    reset_peak,
    shape_of,
    sync,
)

from bench.dpo_vs_trl import Mark, _steady, make_pairs


def computed_share(policy: str, pairs: list[dict], *, max_length: int, max_prompt_length: int) -> float:
    """Tokens our DPO computes with a shared prefix (prompt once) over real tokens (prompt twice)."""
    from transformers import AutoTokenizer

    from rewardmodel.lib.data import parse_pair
    from training.lib.dpo_data import encode_pairs

    tokenizer = AutoTokenizer.from_pretrained(policy)
    examples, _ = encode_pairs(tokenizer, [parse_pair(p) for p in pairs], max_length=max_length,
                               max_prompt_length=max_prompt_length)
    return sum(e.shared_length for e in examples) / max(1, sum(e.real_tokens for e in examples))


def reward_model(ctx: Context, pairs: list[dict]) -> Row:
    """The loop's reward-model run on `pairs` (the round's new votes), app defaults, bf16 autocast."""
    from rewardmodel.lib.config import RewardConfig
    from rewardmodel.lib.train import train_reward_model

    s = ctx.sizes
    config = RewardConfig(backbone=ctx.rm_backbone, epochs=1.0, batch_size=s.rm_batch, max_length=s.rm_length,
                          dtype=ctx.amp, weights=ctx.weights, seed=ctx.seed, num_threads=ctx.threads)
    out = ctx.work / "reward-model"
    shutil.rmtree(out, ignore_errors=True)
    reset_peak()
    started = time.perf_counter()
    result = train_reward_model(config, pairs, out)
    sync()
    seconds = time.perf_counter() - started
    m = result.metrics
    flops = 6 * compute_params(shape_of(ctx.rm_backbone), lm_head=False)
    note = (f"{int(m['train_pairs'])} pairs, {int(m['optimizer_steps'])} steps, train {m['train_seconds']:.1f} s, "
            f"held-out acc. {m.get('eval_accuracy', float('nan')):.2f}")
    row = Row("loop", "reward model (train_reward_model)", seconds, m["tokens_per_s"] * m["train_seconds"],
              m["tokens_per_s"], mfu(m["tokens_per_s"], flops, ctx.peak_flops), peak_gib(), note)
    release()
    return ctx.add(row)


def dpo_config(ctx: Context, *, lora: bool, weights: str, batch: int, length: int, steps: int | None = None,
               lr: float = 5e-6, **extra: Any) -> Any:
    from training.lib.dpo_config import DPOConfig

    return DPOConfig(model=extra.pop("model", ctx.policy), beta=0.1, learning_rate=lr, batch_size=batch,
                     max_steps=steps, max_length=length, max_prompt_length=length // 2, lora=lora, seed=ctx.seed,
                     dtype=ctx.amp, weights=weights, num_threads=ctx.threads, **extra)


def run_ours(ctx: Context, config: Any, pairs: list[dict], name: str) -> dict[str, Any]:
    """train_dpo timed like bench/dpo_vs_trl.py's run_ours: steady-state rates between step ends;
    peak GPU memory read at the last step (before the checkpoint is saved and verified)."""
    from training.lib.dpo import train_dpo

    out = ctx.work / f"dpo-{name}"
    shutil.rmtree(out, ignore_errors=True)
    marks: list[Mark] = []
    peaks: list[tuple[float, float]] = []
    cpu0 = time.process_time()

    def progress(step: int, total: int, e: dict[str, float]) -> None:
        marks.append((e["elapsed_s"], time.process_time() - cpu0, e["tokens_seen"], e["pairs_seen"], time.time()))
        peaks.append((peak_gib() or 0.0, peak_reserved_gib() or 0.0))

    reset_peak()
    started = time.perf_counter()
    result = train_dpo(config, pairs, out, progress)
    sync()
    seconds = time.perf_counter() - started
    m = result.metrics
    return {**_steady(marks), "seconds": seconds, "checkpoint": str(out), "losses": [e["loss"] for e in result.history],
            "shared_prefix": bool(m["shared_prefix"]), "padding": m["padding_fraction"],
            "ref_seconds": m["reference_seconds"], "train_seconds": m["train_seconds"],
            "tokens": result.history[-1]["tokens_seen"], "peak_gib": max(p[0] for p in peaks) if ctx.cuda else None,
            "peak_reserved_gib": max(p[1] for p in peaks) if ctx.cuda else None}


def dpo_stage(ctx: Context, pairs: list[dict], *, lora: bool) -> tuple[Row, str]:
    """The loop's DPO run (full or LoRA) on the round's pairs, app defaults; (row, checkpoint folder)."""
    s = ctx.sizes
    config = dpo_config(ctx, lora=lora, weights=ctx.weights, batch=s.dpo_batch, length=s.dpo_length)
    r = run_ours(ctx, config, pairs, "lora" if lora else "full")
    share = computed_share(ctx.policy, pairs, max_length=s.dpo_length, max_prompt_length=s.dpo_length // 2)
    flops = (4 if lora else 6) * compute_params(shape_of(ctx.policy)) * (share if r["shared_prefix"] else 1.0)
    note = (f"{len(r['losses'])} steps, loss {r['losses'][0]:.4f} → {r['losses'][-1]:.4f}, "
            f"ref. precompute {r['ref_seconds']:.1f} s, padding {r['padding']:.1%}")
    row = Row("loop", f"DPO {'LoRA' if lora else 'full'} (train_dpo)", r["seconds"], r["tokens"], r["tokens_per_s"],
              mfu(r["tokens_per_s"], flops, ctx.peak_flops), r["peak_gib"], note)
    release()
    return ctx.add(row), r["checkpoint"]


def run_trl(ctx: Context, pairs: list[dict], *, bf16_weights: bool) -> dict[str, Any]:
    """TRL DPOTrainer at its fastest settings here: bf16 on a GPU (autocast over fp32 weights, or bf16
    weights), no gradient checkpointing, reference log-probs precomputed; fp32 on a CPU."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    datasets.disable_progress_bars()
    s = ctx.sizes
    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    marks: list[Mark] = []
    start = [0.0, 0.0]
    holder: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            start[:] = [time.perf_counter(), time.process_time()]

        def on_step_end(self, a: Any, state: Any, control: Any, **k: Any) -> None:
            # TRL logs every step (logging_steps=1), which reads the loss: the GPU is synchronised here.
            marks.append((time.perf_counter() - start[0], time.process_time() - start[1],
                          float(holder["trainer"]._total_train_tokens), float(state.global_step * s.trl_batch),
                          time.time()))

    config = TRLConfig(
        output_dir=str(ctx.work / "trl"), per_device_train_batch_size=s.trl_batch, learning_rate=5e-6, beta=0.1,
        max_steps=s.trl_steps, bf16=ctx.cuda, gradient_checkpointing=False, precompute_ref_log_probs=True,
        max_length=s.trl_length, seed=ctx.seed, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, use_cpu=not ctx.cuda, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
        dataloader_pin_memory=ctx.cuda,
    )
    tokenizer = AutoTokenizer.from_pretrained(ctx.policy)
    model = AutoModelForCausalLM.from_pretrained(ctx.policy, dtype=torch.bfloat16 if bf16_weights else torch.float32)
    reset_peak()
    started = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer, callbacks=[Clock()],
                         train_dataset=datasets.Dataset.from_list(rows))
    holder["trainer"] = trainer
    setup = time.perf_counter() - started
    trainer.train()
    sync()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {**_steady(marks), "seconds": time.perf_counter() - started, "losses": losses, "setup_seconds": setup,
              "tokens": marks[-1][2], "peak_gib": peak_gib()}
    del trainer, model
    release()
    return result


def dpo_vs_trl(ctx: Context) -> None:
    """Ours and TRL on the same model, pairs, β, lr, batch, steps and device, one after the other."""
    import torch

    from rewardmodel.lib.precision import stored_dtype

    s = ctx.sizes
    pairs, source = make_pairs(s.trl_steps * s.trl_batch, ctx.seed + 1)
    have_trl = all(importlib.util.find_spec(m) is not None for m in ("trl", "datasets"))
    # (label, our `weights` setting, TRL model loaded in bf16). Ours trains bf16 weights ("auto") only
    # over a bf16 checkpoint; an fp32 folder (the converted GGUF) would train fp32 against TRL's bf16.
    variants = [("bf16 autocast, fp32 weights", "fp32", False)] if ctx.cuda else [("fp32", "fp32", False)]
    if ctx.cuda and stored_dtype(ctx.policy) == torch.bfloat16:
        variants.append(("bf16 weights", "auto", True))
    elif ctx.cuda:
        ctx.note("dpo-vs-trl", "bf16-weights variant skipped: the policy folder is stored in fp32")
    share = computed_share(ctx.policy, pairs, max_length=s.trl_length, max_prompt_length=s.trl_length // 2)
    n6 = 6 * compute_params(shape_of(ctx.policy))
    ctx.note("dpo-vs-trl", f"{len(pairs)} pairs ({source}), full fine-tune, batch {s.trl_batch}, {s.trl_steps} steps, "
                           f"β 0.1, lr 5e-6, max_length {s.trl_length}; ours computes {share:.0%} of the real "
                           "tokens (shared prompt), which MFU accounts for")
    for label, weights, bf16_weights in variants:
        config = dpo_config(ctx, lora=False, weights=weights, batch=s.trl_batch, length=s.trl_length,
                            steps=s.trl_steps)
        ours = run_ours(ctx, config, pairs, f"vs-trl-{weights}")
        shutil.rmtree(ours["checkpoint"], ignore_errors=True)
        release()
        ctx.add(Row("dpo-vs-trl", f"ours, {label}", ours["seconds"], ours["tokens"], ours["tokens_per_s"],
                    mfu(ours["tokens_per_s"], n6 * (share if ours["shared_prefix"] else 1.0), ctx.peak_flops),
                    ours["peak_gib"], f"loss {ours['losses'][0]:.4f} → {ours['losses'][-1]:.4f}, "
                                      f"{ours['seconds_per_step']:.3f} s/step"))
        if not have_trl:
            ctx.add(Row("dpo-vs-trl", f"TRL, {label}", note="skipped: trl or datasets not installed"))
            continue
        if ctx.left() < 30:
            ctx.add(Row("dpo-vs-trl", f"TRL, {label}", note="skipped: out of time"))
            continue
        trl = run_trl(ctx, pairs, bf16_weights=bf16_weights)
        ctx.add(Row("dpo-vs-trl", f"TRL DPOTrainer, {label}", trl["seconds"], trl["tokens"], trl["tokens_per_s"],
                    mfu(trl["tokens_per_s"], n6, ctx.peak_flops), trl["peak_gib"],
                    f"loss {trl['losses'][0]:.4f} → {trl['losses'][-1]:.4f}, {trl['seconds_per_step']:.3f} s/step, "
                    f"setup {trl['setup_seconds']:.1f} s"))
        ctx.note("dpo-vs-trl", f"{label}: ours/TRL real tokens/s = **{ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x** "
                               "(steady state, run one after the other)")
