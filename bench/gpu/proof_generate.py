"""Generation stages of the GPU proof: the loop round's battle, and tokens/s per engine.

Every engine samples the same demo prompts with the same settings (temperature 0.7, top_p 0.9,
no top_k, the same max_new_tokens) on the same device and dtype. Tokens are the new tokens up to
and including the first end-of-sequence token, as `GeneratedText.tokens` counts them. Wall time
includes loading the model (under a second for SmolLM2 from the page cache), for every engine.
MFU counts 2 x N FLOPs per new token (prompt prefill and attention left out).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from proof_common import Context, Row, compute_params, mfu, peak_gib, release, reset_peak, shape_of, sync

SAMPLING = {"temperature": 0.7, "top_p": 0.9}


def _ours(ctx: Context, model: str, prompts: Sequence, *, batch: int, new_tokens: int, device: str = "auto",
          kv_cache: str = "dynamic") -> tuple[float, int, str]:
    """(seconds, new tokens, "device dtype") of training.lib.generation.generate_local."""
    from training.lib.generation import GenerationConfig, generate_local

    config = GenerationConfig(model=model, max_new_tokens=new_tokens, batch_size=batch, seed=ctx.seed,
                              device=device, kv_cache=kv_cache, **SAMPLING)
    sync()
    started = time.perf_counter()
    outputs = generate_local(config, prompts)
    sync()
    return time.perf_counter() - started, sum(o.tokens for o in outputs), f"{outputs[0].device} {outputs[0].dtype}"


def _plain(ctx: Context, model_path: str, prompts: Sequence, *, batch: int, new_tokens: int) -> tuple[float, int]:
    """transformers' own loop: load, then `model.generate` on the prompts in their order, `batch` at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.lib.generation import eos_token_ids, render_prompt, resolve_device, resolve_dtype

    device = resolve_device("auto")
    sync()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, resolve_dtype("auto", device)))
    model.to(device).eval()
    eos = eos_token_ids(tokenizer, model)
    texts = [render_prompt(tokenizer, p) for p in prompts]
    tokens = 0
    for start in range(0, len(texts), batch):
        torch.manual_seed(ctx.seed + start)
        inputs = tokenizer(texts[start:start + batch], add_special_tokens=False, padding=True,
                           return_tensors="pt").to(device)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=True, top_k=None, max_new_tokens=new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, **SAMPLING)
        for row in out[:, inputs["input_ids"].shape[1]:].tolist():
            tokens += next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
    sync()
    seconds = time.perf_counter() - started
    del model
    release()
    return seconds, tokens


def battle(ctx: Context, prompts: Sequence, candidate: str) -> tuple[Row, dict[str, Any]]:
    """The loop's battle: the candidate and the incumbent each answer every prompt (app settings)."""
    s = ctx.sizes
    reset_peak()
    total_s, total_tokens, runs = 0.0, 0, {}
    for name, model in (("candidate", candidate), ("incumbent", ctx.policy)):
        seconds, tokens, where = _ours(ctx, model, prompts, batch=s.gen_batch, new_tokens=s.new_tokens)
        runs[name] = {"seconds": seconds, "tokens": tokens, "where": where}
        total_s, total_tokens = total_s + seconds, total_tokens + tokens
    rate = total_tokens / total_s
    row = Row("loop", f"battle: 2 checkpoints x {len(prompts)} prompts (generate_local)", total_s, total_tokens, rate,
              mfu(rate, 2 * compute_params(shape_of(ctx.policy)), ctx.peak_flops), peak_gib(),
              f"{runs['incumbent']['where']}, batch {s.gen_batch}, {s.new_tokens} new tokens max")
    release()
    return ctx.add(row), runs["incumbent"]


def _add(ctx: Context, name: str, seconds: float, tokens: int, note: str = "") -> float:
    rate = tokens / seconds
    n2 = 2 * compute_params(shape_of(ctx.policy))
    ctx.add(Row("generation", name, seconds, tokens, rate, mfu(rate, n2, ctx.peak_flops), None, note))
    return rate


def engines(ctx: Context, prompts: Sequence, incumbent: dict[str, Any]) -> None:
    """Tokens/s per engine on the battle's prompts. `incumbent`: the battle's own run of the base
    model (ours at the battle's batch size), reused."""
    s = ctx.sizes
    _add(ctx, f"ours (generate_local), batch {s.gen_batch}, length-sorted", incumbent["seconds"],
         incumbent["tokens"], f"{len(prompts)} prompts; the battle's incumbent run, {incumbent['where']}")
    seconds, tokens = _plain(ctx, ctx.policy, prompts, batch=s.gen_batch, new_tokens=s.new_tokens)
    _add(ctx, f"transformers model.generate, batch {s.gen_batch}, prompt order", seconds, tokens,
         f"{len(prompts)} prompts")
    seconds, tokens = _plain(ctx, ctx.policy, prompts[:s.plain_b1_prompts], batch=1, new_tokens=s.new_tokens)
    _add(ctx, "transformers model.generate, one prompt at a time", seconds, tokens,
         f"first {s.plain_b1_prompts} prompts")
    seconds, tokens, _ = _ours(ctx, ctx.policy, prompts, batch=len(prompts), new_tokens=s.new_tokens)
    _add(ctx, f"ours (generate_local), batch {len(prompts)} (all at once)", seconds, tokens, f"{len(prompts)} prompts")


def cpu_path(ctx: Context, prompts: Sequence, incumbent: dict[str, Any]) -> None:
    """On a GPU machine: the path every battle took before issue 15 (fp32 on the CPU), on its cores."""
    s = ctx.sizes
    if not ctx.cuda or ctx.left() < 45:
        if ctx.cuda:
            ctx.note("generation", f"CPU row skipped: {ctx.left():.0f} s left")
        return
    few, new_tokens = prompts[:s.gen_batch], min(64, s.new_tokens)
    seconds, tokens, where = _ours(ctx, ctx.policy, few, batch=s.gen_batch, new_tokens=new_tokens, device="cpu")
    cpu = _add(ctx, f"ours on this machine's CPU ({where}), batch {s.gen_batch}", seconds, tokens,
               f"first {len(few)} prompts, {new_tokens} new tokens max")
    gpu = incumbent["tokens"] / incumbent["seconds"]
    ctx.note("generation", f"battle sampling on the GPU vs the CPU path: **{gpu / cpu:.1f}x** tokens/s (goal ≥ 20x)")


def static_cache(ctx: Context, prompts: Sequence) -> None:
    """On a GPU, when time is left: ours with a static KV cache, whose decode step transformers compiles."""
    s = ctx.sizes
    if not ctx.cuda or ctx.left() < 120:
        if ctx.cuda:
            ctx.note("generation", f"static KV cache row skipped: {ctx.left():.0f} s left")
        return
    seconds, tokens, _ = _ours(ctx, ctx.policy, prompts, batch=s.gen_batch, new_tokens=s.new_tokens,
                               kv_cache="static")
    _add(ctx, f"ours, static KV cache (compiled decode step), batch {s.gen_batch}", seconds, tokens,
         f"{len(prompts)} prompts; compile time included")
