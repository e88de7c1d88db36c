"""Direct Preference Optimisation from a preference snapshot: config + pairs + folder in, result out.

    result = train_dpo(DPOConfig(model="smollm2"), read_pairs("snapshot.jsonl"), "ckpt/")

Where the time goes, and what this loop does about it:

* the reference model's log-probabilities are computed once per dataset,
  before training, in large length-sorted no-grad batches
  (``precompute_ref=True``), instead of one extra forward per step;
* LoRA (peft) trains adapters only and the reference is the same weights
  with the adapters switched off, so there is never a second copy; full
  fine-tuning with ``precompute_ref=False`` keeps a frozen copy;
* chosen and rejected share one forward pass, with the prompt encoded once
  for both (shared prefix, on architectures known to honour 4D masks) and
  batches of similar lengths (bucketing), so little is padding;
* only response tokens reach the LM head (see `logprobs`);
* fp32 on a CPU (no bf16 units there); on a GPU with bf16 the base's own
  dtype (bf16 weights and AdamW state), or fp32 master weights with bf16
  autocast when ``weights="fp32"`` asks for them (`rewardmodel.lib.precision`);
* the checkpoint is saved in the base model's own dtype, whatever it trained in.

Logged after every optimizer step: loss, implicit rewards of chosen and
rejected (β · log-ratio), their margin, accuracy (chosen reward > rejected),
a KL estimate, learning rate, gradient norm, throughput. Under torchrun
(`training.lib.distributed`) every rank takes its share of each micro-batch,
gradients and logged sums are summed over the ranks, and rank 0 alone reports
progress and publishes the checkpoint, after a barrier; with
``parallel="shard"`` the ranks hold 1/N each of the weights, gradients and
AdamW state instead of whole replicas (FSDP2, `training.lib.sharding`). ``kl`` is the mean
per response token of the k3 estimator exp(ρ) − ρ − 1, ρ = log π_ref − log πθ,
on the dataset's responses (not samples of πθ): it tracks drift from the
reference, it is not an unbiased KL(πθ‖π_ref).

Pure module: never imports Django or Celery. ``python -m training.lib.dpo``
runs the command line in `training.lib.dpo_cli`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardmodel.lib.data import PreferencePair, bucketed_batches, parse_pair
from rewardmodel.lib.model import resolve_backbone
from rewardmodel.lib.precision import dtype_name, resolve_weights_dtype, stored_dtype
from rewardmodel.lib.ranks import Team, current_team
from rewardmodel.lib.runtime import forward_context
from training.lib.checkpoint import ensure_free, load_policy, probe_verifier, save_checkpoint
from training.lib.dpo_config import DPOConfig
from training.lib.dpo_data import DPOBatch, DPOCollator, DPOExample, encode_pairs, supports_shared_prefix
from training.lib.dpo_losses import dpo_loss
from training.lib.logprobs import reference_of, sequence_sums
from training.lib.modes import resolve_run_mode
from training.lib.sharding import full_state_dict, resolve_parallel, scored_logprobs, shard_for_training, whole_policy

__all__ = ["DPOConfig", "DPOResult", "ProgressFn", "precompute_reference", "train_dpo"]

ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class DPOResult:
    """`metrics`: data counts and run summary; `history`: one dict per optimizer step."""

    config: DPOConfig
    checkpoint_path: str
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(config: DPOConfig) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device)


def resolve_autocast(config: DPOConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype over fp32 weights, or None for plain fp32 (`train_dpo` drops it over bf16 weights)."""
    if device.type != "cuda":
        if config.dtype == "bf16":
            raise ValueError("dtype='bf16' on a CPU is refused: no bf16 units, orders of magnitude slower than fp32")
        return None
    if config.dtype == "bf16" or (config.dtype == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def uses_shared_prefix(config: DPOConfig, model: Any) -> bool:
    supported = supports_shared_prefix(model)
    if config.shared_prefix == "on" and not supported:
        raise ValueError("shared prefix is not supported for this model (see SHARED_PREFIX_TYPES)")
    return supported and config.shared_prefix != "off"


def precompute_reference(
    reference: Any,
    examples: Sequence[DPOExample],
    collate: DPOCollator,
    *,
    batch_size: int,
    device: torch.device,
    autocast: torch.dtype | None = None,
    team: Team | None = None,
) -> list[torch.Tensor]:
    """Reference log-probs per example ([n_chosen + n_rejected] fp32 CPU tensors), in input order.

    Batches are globally length-sorted (no gradient, so order is free). The
    caller puts the model in eval mode / adapters off (see `reference_of`).
    `team` (a sharded model, whose every forward is collective): every rank runs as many batches as
    the busiest one, the extra ones on `examples[0]` (never empty then) with their results dropped.
    """
    out: list[torch.Tensor | None] = [None] * len(examples)
    order = bucketed_batches([e.shared_length for e in examples], batch_size, bucket_size=1, rng=None)
    rounds = team.most(len(order), device) if team is not None else len(order)
    with torch.no_grad(), forward_context(device, autocast):
        for idx in order:
            chunk = [examples[i] for i in idx]
            batch = collate(chunk).to(device)
            for i, values in zip(idx, DPOCollator.split(scored_logprobs(reference, batch.tokens), chunk), strict=True):
                out[i] = values
        for _ in range(rounds - len(order)):
            scored_logprobs(reference, collate(examples[:1]).to(device).tokens)
    return [t if t is not None else torch.zeros(0) for t in out]


def batch_loss(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, batch: DPOBatch, config: DPOConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """(mean loss, sums for logging) from per-token log-probs [M] of policy and reference."""
    tokens, n = batch.tokens, batch.num_pairs
    policy = sequence_sums(policy_logps, tokens.seq_index, tokens.num_seqs)  # [2B]
    ref = sequence_sums(ref_logps, tokens.seq_index, tokens.num_seqs)
    chosen_lr, rejected_lr = policy[:n] - ref[:n], policy[n:] - ref[n:]  # [B] each
    losses = dpo_loss(config.loss, chosen_lr, rejected_lr, beta=config.beta, label_smoothing=config.label_smoothing,
                      chosen_tokens=batch.chosen_lengths, rejected_tokens=batch.rejected_lengths)
    with torch.no_grad():
        chosen_r, rejected_r = config.beta * chosen_lr.float(), config.beta * rejected_lr.float()
        rho = (ref_logps - policy_logps).float().clamp(max=50.0)  # log π_ref − log πθ per token
        sums = {
            "loss": float(losses.sum()),
            "rewards_chosen": float(chosen_r.sum()),
            "rewards_rejected": float(rejected_r.sum()),
            "margin": float((chosen_r - rejected_r).sum()),
            "accuracy": float((chosen_r > rejected_r).float().sum()),
            "logps_chosen": float(policy[:n].sum()),
            "logps_rejected": float(policy[n:].sum()),
            "kl_sum": float((rho.exp() - rho - 1.0).sum()),
            "kl_tokens": float(rho.numel()),
        }
    return losses.mean(), sums


_SUMS = ("loss", "rewards_chosen", "rewards_rejected", "margin", "accuracy", "logps_chosen", "logps_rejected",
         "kl_sum", "kl_tokens", "pairs")


class _Meter:
    """Sums over the current optimizer step (`window`) and over the run (`totals`), over every rank.

    Each rank adds its own micro-batches; `step` sums the ranks' figures before logging them.
    """

    def __init__(self, team: Team, device: torch.device) -> None:
        self.team, self.device = team, device
        self.window = dict.fromkeys(_SUMS, 0.0)
        self._local = {"pairs": 0, "tokens": 0, "computed": 0, "padded": 0}
        self.totals = dict(self._local)

    def add(self, sums: Mapping[str, float], batch: DPOBatch) -> None:
        for key, value in {**sums, "pairs": float(batch.num_pairs)}.items():
            self.window[key] += value
        for key, value in (("pairs", batch.num_pairs), ("tokens", batch.real_tokens),
                           ("computed", batch.computed_tokens), ("padded", batch.padded_tokens)):
            self._local[key] += value

    def step(self, step: int, elapsed: float, *, lr: float, grad_norm: float) -> dict[str, float]:
        """The step's log entry (per-pair means, per-token KL, throughput so far); resets the window."""
        window = self.team.sum_values(self.window, self.device)
        self.window = dict.fromkeys(_SUMS, 0.0)
        self.totals = self.team.sum_values(self._local, self.device)
        n = window.pop("pairs")
        kl_sum, kl_tokens = window.pop("kl_sum"), window.pop("kl_tokens")
        return {"step": float(step), **{k: v / n for k, v in window.items()}, "kl": kl_sum / max(1.0, kl_tokens),
                "lr": lr, "grad_norm": grad_norm, "elapsed_s": elapsed, "pairs_seen": float(self.totals["pairs"]),
                "tokens_seen": float(self.totals["tokens"]), "pairs_per_s": self.totals["pairs"] / elapsed,
                "tokens_per_s": self.totals["tokens"] / elapsed}


def _plan(examples: Sequence[DPOExample], config: DPOConfig, shared: bool) -> list[list[int]]:
    """Micro-batches (example indices) for the whole run, epoch after epoch, cut to the step budget."""
    lengths = [e.shared_length if shared else e.separate_length for e in examples]
    per_epoch = math.ceil(len(examples) / config.batch_size)
    wanted = config.max_steps * config.grad_accum if config.max_steps else max(1, math.ceil(config.epochs * per_epoch))
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < wanted:
        rng = random.Random(config.seed * 1_000_003 + epoch)
        batches += bucketed_batches(lengths, config.batch_size, bucket_size=config.bucket_size, rng=rng)
        epoch += 1
    return batches[:wanted]


def _prepare_reference(
    config: DPOConfig, model: Any, examples: Sequence[DPOExample], batches: Sequence[Sequence[int]],
    collate: DPOCollator, device: torch.device, amp: torch.dtype | None, *, frozen: Any | None = None,
    team: Team | None = None,
) -> tuple[list[torch.Tensor] | None, Any | None]:
    """(per-example reference log-probs, or None; frozen reference copy, or None) for the run.

    `frozen`: the reference copy already made (a sharded run shards it beside the policy);
    `team`: given when `model` is sharded (see `precompute_reference`).
    """
    if not config.precompute_ref:
        # LoRA switches its adapters off instead; full fine-tuning needs a frozen copy.
        if frozen is None and not hasattr(model, "disable_adapter"):
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
        return None, frozen
    needed = sorted({i for idx in batches for i in idx})  # a max_steps run needs only what it visits
    model.eval()
    with reference_of(model, None) as ref_model:
        values = precompute_reference(ref_model, [examples[i] for i in needed], collate, device=device,
                                      batch_size=config.ref_batch_size or 2 * config.batch_size, autocast=amp,
                                      team=team)
    reference = [torch.zeros(0)] * len(examples)
    for i, v in zip(needed, values, strict=True):
        reference[i] = v
    return reference, None


def _optimizer(params: list[torch.nn.Parameter], config: DPOConfig, device: torch.device) -> torch.optim.AdamW:
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # no decay on norms/biases
    # The fused kernel is one pass over each tensor; it exists on CPU and CUDA.
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=device.type in ("cpu", "cuda"))


def _schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then linear decay to zero (transformers' default schedule)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_dpo(
    config: DPOConfig,
    pairs: Iterable[PreferencePair | Mapping[str, Any]],
    out_dir: str | Path,
    progress: ProgressFn | None = None,
    *,
    lineage: dict[str, Any] | None = None,
) -> DPOResult:
    """Train a policy by DPO and publish it atomically as a checkpoint folder at `out_dir`.

    `pairs`: `PreferencePair`s or raw snapshot/TRL records; ties are skipped
    and counted. `progress(step, total_steps, metrics)` runs after every
    optimizer step. `lineage` (snapshot, parent checkpoint, run id, ...) is
    written into meta.json as given. Raises FileExistsError if `out_dir` is
    a non-empty folder (checked before training), ValueError if no non-tie
    pair is left.
    """
    started = time.perf_counter()
    team = current_team()
    ensure_free(out_dir)
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)  # before LoRA init
    device = resolve_device(config)
    config = resolve_run_mode(config, kind="dpo", device=device)  # "auto" -> full/lora/qlora; refuses qlora off CUDA
    config = dataclasses.replace(config, parallel=resolve_parallel(config.parallel, config.mode, team))
    sharded = config.parallel == "shard"
    amp = resolve_autocast(config, device)
    all_pairs = [p if isinstance(p, PreferencePair) else parse_pair(p) for p in pairs]
    model_path = resolve_backbone(config.model)
    base_dtype = stored_dtype(model_path)
    train_dtype = resolve_weights_dtype(config.weights, device, base_dtype)
    if train_dtype != torch.float32:
        amp = None  # the weights already compute in bf16
    # Sharded: loaded on the CPU, each layer moves to the device as its shard (one layer whole at a time).
    model, tokenizer, model_path = load_policy(model_path, torch.device("cpu") if sharded else device,
                                               lora=_lora_options(config), dtype=train_dtype,
                                               gradient_checkpointing=config.gradient_checkpointing,
                                               quantize=config.mode == "qlora")
    examples, report = encode_pairs(tokenizer, all_pairs, max_length=config.max_length,
                                    max_prompt_length=config.max_prompt_length)
    if not examples:
        raise ValueError(f"no trainable pairs: {report.pairs_in} pairs in, {report.ties_skipped} ties")
    shared = uses_shared_prefix(config, model)
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    collate = DPOCollator(pad_id, shared_prefix=shared)
    batches = _plan(examples, config, shared)
    shares = [team.share(idx) for idx in batches]  # this rank's part of each micro-batch (all of it alone)
    # What each rank runs: its share; sharded, every forward is collective, so an empty share runs
    # the batch's first pair with its loss multiplied by 0.
    runs = [share or idx[:1] for idx, share in zip(batches, shares, strict=True)] if sharded else shares
    total_steps = math.ceil(len(batches) / config.grad_accum)

    ref_start = time.perf_counter()
    frozen = None
    if sharded:  # a per-step reference copy is sharded too
        model, frozen = shard_for_training(model, device, mixed=amp, frozen_copy=not config.precompute_ref)
    reference, frozen = _prepare_reference(config, model, examples, runs, collate, device, amp, frozen=frozen,
                                           team=team if sharded else None)
    ref_seconds = time.perf_counter() - ref_start
    if sharded:
        model.reshard()  # the root unit stays gathered after a forward: its parameters are the shards again
    params = [p for p in model.parameters() if p.requires_grad]
    if not sharded:  # sharded weights came from the same files on every rank
        team.broadcast(params)
    optimizer = _optimizer(params, config, device)
    scheduler = _schedule(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    model.train()
    history: list[dict[str, float]] = []
    meter = _Meter(team, device)
    setup_seconds = time.perf_counter() - started - ref_seconds
    loop_start = time.perf_counter()
    for i, (idx, share, run) in enumerate(zip(batches, shares, runs, strict=True)):
        if run:  # replicated, a short batch may leave a rank nothing: it adds no gradient
            chunk = [examples[j] for j in run]
            batch = collate(chunk, None if reference is None else [reference[j] for j in run]).to(device)
            sums = _backward(model, frozen, batch, config, device, amp, share=len(share) / len(idx))
            if share:
                meter.add(sums, batch)
        if (i + 1) % config.grad_accum and i + 1 != len(batches):
            continue
        if not sharded:  # sharded gradients were summed by FSDP's reduce-scatter at each backward
            team.sum_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)  # over every shard
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        entry = meter.step(len(history) + 1, time.perf_counter() - loop_start, lr=scheduler.get_last_lr()[0],
                           grad_norm=float(grad_norm.full_tensor() if sharded else grad_norm))
        history.append(entry)
        if progress is not None and team.main:
            progress(len(history), total_steps, entry)
    train_seconds = time.perf_counter() - loop_start

    metrics = {
        **report.as_metrics(),
        **_run_metrics(history, meter, shared=shared, setup_seconds=setup_seconds, ref_seconds=ref_seconds,
                       train_seconds=train_seconds),
    }
    del optimizer, scheduler, frozen  # Adam state (2x the weights) is freed before verification loads a copy
    weights = full_state_dict(model) if sharded else None  # collective: every rank takes part
    team.barrier()  # every rank has finished its last step
    if not team.main:
        return DPOResult(config=config, checkpoint_path="", metrics=metrics, history=history)
    if sharded:  # on the CPU: publishing never needs one GPU to hold the whole weights
        model = whole_policy(model_path, weights, dtype=base_dtype)
    meta = {
        "kind": "dpo",
        "base_model": config.model,
        "base_model_path": model_path,
        "config": config.to_dict(),
        "lineage": dict(lineage or {}),
        "metrics": metrics,
        "precision": {"base": dtype_name(base_dtype), "weights": dtype_name(train_dtype),
                      "autocast": dtype_name(amp) if amp is not None else None},
    }
    path = _publish(model, tokenizer, examples[0], pad_id, out_dir, meta, merge_lora=config.lora_merge,
                    dtype=base_dtype)
    return DPOResult(config=config, checkpoint_path=str(path), metrics=metrics, history=history)


def _backward(model: Any, frozen: Any | None, batch: DPOBatch, config: DPOConfig, device: torch.device,
              amp: torch.dtype | None, *, share: float = 1.0) -> dict[str, float]:
    """Forward and backward of one micro-batch (its loss scaled by 1 / grad_accum, and by this rank's
    `share` of the global micro-batch); returns its sums for logging.

    Reference log-probs come with the batch when precomputed, else from `frozen` or the adapters switched off.
    """
    with forward_context(device, amp):
        policy_logps = scored_logprobs(model, batch.tokens)
        if batch.ref_token_logps is not None:
            ref_logps = batch.ref_token_logps
        else:
            with torch.no_grad(), reference_of(model, frozen) as ref_model:
                ref_logps = scored_logprobs(ref_model, batch.tokens)
    loss, sums = batch_loss(policy_logps, ref_logps, batch, config)
    (loss * share / config.grad_accum).backward()
    return sums


def _lora_options(config: DPOConfig) -> dict[str, Any] | None:
    """peft `LoraConfig` keyword arguments for a LoRA run, None for full fine-tuning."""
    if not config.lora:
        return None
    targets = config.lora_target_modules
    return {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": targets if isinstance(targets, str) else list(targets)}


def _run_metrics(history: list[dict[str, float]], meter: _Meter, *, shared: bool, setup_seconds: float,
                 ref_seconds: float, train_seconds: float) -> dict[str, float]:
    """Summary of the optimizer steps: layout, timings, throughput, first loss and the last step's figures."""
    return {
        "optimizer_steps": float(len(history)),
        "shared_prefix": float(shared),
        "padding_fraction": 1.0 - meter.totals["computed"] / max(1, meter.totals["padded"]),
        "setup_seconds": setup_seconds,
        "reference_seconds": ref_seconds,
        "train_seconds": train_seconds,
        "pairs_per_s": meter.totals["pairs"] / train_seconds,
        "tokens_per_s": meter.totals["tokens"] / train_seconds,
        "tokens_per_s_with_reference": meter.totals["tokens"] / (train_seconds + ref_seconds),
        "first_loss": history[0]["loss"],
        **{f"final_{k}": history[-1][k] for k in ("loss", "margin", "accuracy", "kl", "rewards_chosen",
                                                  "rewards_rejected")},
    }


def _publish(model: Any, tokenizer: Any, probe_example: DPOExample, pad_id: int, out_dir: str | Path,
             meta: dict[str, Any], *, merge_lora: bool, dtype: torch.dtype) -> Path:
    """Save the trained policy in `dtype` as a checkpoint that, reloaded, must reproduce the saved
    model's log-probs of `probe_example`."""
    model.eval()
    probe = DPOCollator(pad_id, shared_prefix=False)([probe_example]).tokens
    return save_checkpoint(model, tokenizer, out_dir, meta, merge_lora=merge_lora, dtype=dtype,
                           verify=probe_verifier(probe))


if __name__ == "__main__":
    from rewardmodel.lib.ranks import exit_rank
    from training.lib.dpo_cli import main

    exit_rank(main())
