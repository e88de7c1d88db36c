"""The largest model that fits the time, trained by DPO with LoRA, against the memory table.

No hub on the GPU machine: the model is a Llama-architecture model of a real model's shape
(training/lib/memory.py `SHAPES`), random-initialised on the device in bf16 and saved with
SmolLM2's tokenizer (ids stay below SmolLM2's vocabulary, the embedding is the shape's). It runs
exactly the memory table's workload (`Workload()`: batch 4 pairs of 1,024-token sequences,
gradient checkpointing, LoRA rank 16 on all linear layers, bf16 base) with the prompt encoded
twice (shared_prefix="off"), as the table assumes; the peak of torch.cuda.max_memory_allocated
during training is set against `estimate("dpo", "lora", shape, ...)`.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from proof_common import (
    Context,
    Row,
    compute_params,
    long_pairs,
    mfu,
    random_init_folder,
    release,
    shape_of,
)
from proof_train import dpo_config, run_ours

from training.lib.memory import GIB, SHAPES, Shape, Workload, estimate

CANDIDATES = ("Llama-3.1-8B", "Qwen2.5-7B", "Qwen2.5-3B", "SmolLM2-1.7B", "Qwen2.5-0.5B")


def workload(ctx: Context) -> Workload:
    s = ctx.sizes
    return Workload(batch=s.big_batch, length=s.big_length, gradient_checkpointing=True, lora_rank=16)


def choose_shape(ctx: Context, requested: str | None) -> Shape:
    """`requested` (a SHAPES name), else on a GPU the largest candidate that fits 90% of its memory by the
    estimate and the time left (about 25 s plus 12 s per billion parameters to build, save, load and
    verify); on a CPU a small Llama with the policy's vocabulary."""
    import torch

    by_name = {s.name.lower(): s for s in SHAPES}
    if requested:
        if requested.lower() not in by_name:
            raise SystemExit(f"unknown --big-shape {requested!r}; one of {', '.join(s.name for s in SHAPES)}")
        return by_name[requested.lower()]
    vocab = shape_of(ctx.policy).vocab
    if not ctx.cuda:
        hidden, layers = (64, 2) if ctx.mode == "tiny" else (256, 4)
        return Shape(f"Llama {hidden}x{layers} (CPU stand-in)", hidden, layers, 3 * hidden, vocab, 4, 2)
    budget = 0.9 * torch.cuda.get_device_properties(0).total_memory
    for name in CANDIDATES:
        shape = by_name[name.lower()]
        if estimate("dpo", "lora", shape, workload(ctx)).fits(budget) and 25 + 12 * shape.params / 1e9 < ctx.left():
            return shape
    return by_name["qwen2.5-0.5b"]


def _folder(ctx: Context, shape: Shape) -> Path:
    """A temporary model folder of `shape`, in RAM (/dev/shm) when it has room to spare, else under the work folder."""
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(ctx.policy)
    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied_embeddings, max_position_embeddings=max(4096, 2 * ctx.sizes.big_length),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    shm = Path("/dev/shm")
    room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    parent = shm if room > 1.5 * 2 * shape.params else ctx.work
    folder = Path(tempfile.mkdtemp(prefix="proof-big-", dir=parent))
    return random_init_folder(ctx.policy, folder / "model", config=config, device="cuda" if ctx.cuda else "cpu")


def big_model(ctx: Context, requested: str | None) -> None:
    s = ctx.sizes
    shape = choose_shape(ctx, requested)
    work = workload(ctx)
    started = time.perf_counter()
    folder = _folder(ctx, shape)
    built = time.perf_counter() - started
    try:
        config = dpo_config(ctx, model=str(folder), lora=True, weights="auto", batch=s.big_batch,
                            length=s.big_length, steps=s.big_steps, lr=1e-5, lora_merge=False,
                            gradient_checkpointing=True, shared_prefix="off")
        pairs = long_pairs(s.big_batch * s.big_steps, s.big_length, ctx.seed + 2)
        r = run_ours(ctx, config, pairs, "big")
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
        release()
    est = estimate("dpo", "lora", shape, work)
    measured, reserved = r["peak_gib"], r["peak_reserved_gib"]
    vs = (f", allocated {measured / (est.total / GIB):.0%} and reserved {reserved / (est.total / GIB):.0%} of it"
          if measured is not None else "")
    base = "bf16" if ctx.cuda else "fp32"
    ctx.add(Row("big", f"{shape.name} shape, DPO LoRA r16, {base} base", r["seconds"] + built, r["tokens"],
                r["tokens_per_s"], mfu(r["tokens_per_s"], 4 * compute_params(shape), ctx.peak_flops), measured,
                f"{shape.params / 1e9:.2f}B params; estimate {est.total / GIB:.1f} GiB{vs}; "
                f"{len(r['losses'])} steps, {r['seconds_per_step']:.2f} s/step; build+save {built:.0f} s"))
    peaks = (f"Measured: peak allocated {measured:.1f} GiB (torch.cuda.max_memory_allocated up to the last step), "
             f"peak reserved {reserved:.1f} GiB (max_memory_reserved; the CUDA context, about 0.5 GiB, is in "
             "neither); the estimate's overhead term (2 GiB + 10%) stands for the context and fragmentation"
             if measured is not None else "Peak memory is not measurable on a CPU")
    ctx.note("big", f"{shape.name}: {shape.params / 1e9:.2f}B parameters; workload batch {work.batch} pairs x "
                    f"{work.length} tokens, gradient checkpointing, prompt encoded twice. Estimate by part (GiB): "
                    f"weights {est.weights / GIB:.1f}, optimizer+grads {est.optimizer / GIB:.2f}, activations "
                    f"{est.activations / GIB:.1f}, overhead {est.overhead / GIB:.1f}; total {est.total / GIB:.1f}. "
                    + peaks)
