"""Train a Bradley–Terry reward model: config + pairs + folder in, result out.

The loop is deliberately plain. Chosen and rejected go through one forward
pass; sequences of a batch are packed several to a row (block-diagonal
attention) so padding stays small without sorting batches by length, and on
causal backbones a pair's prompt is encoded once for both responses.
Architectures that cannot take packed rows get length-bucketed batches
instead. AdamW with linear warmup/decay. The backbone's weights are its checkpoint's
own dtype (bf16) on a GPU with bf16, fp32 elsewhere or where `weights="fp32"`
asks (`rewardmodel.lib.precision`); over fp32 weights, TF32 matmuls on a GPU
(`dtype="fp32"` keeps them strict) and bf16 autocast only when `dtype="bf16"`
asks for it. The model is saved in the backbone checkpoint's own dtype.
Under torchrun (`training.lib.distributed`) every rank trains on its share
of each batch, gradients and logged sums are summed over the ranks, and rank
0 alone evaluates and saves, after a barrier; with ``parallel="shard"`` (the
default for full fine-tuning on several ranks) the ranks hold 1/N each of the
weights, gradients and AdamW state instead of whole replicas (FSDP2,
`rewardmodel.lib.sharding`), and rank 0 evaluates and saves the whole weights
gathered onto its CPU.
On a CUDA GPU each whole step (forward, backward, clipping, AdamW) is replayed
from a CUDA graph, one per batch shape, over batches packed into a fixed
layout (`rewardmodel.lib.graphs`, `cuda_graphs` in the config).
No Django, no Celery: the web app calls `train_reward_model` from a task and
records the returned `RewardResult`.
"""

from __future__ import annotations

import math
import random
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardmodel.lib.config import TIE_LOSSES, RewardConfig
from rewardmodel.lib.data import (
    EncodedPair,
    PairCollator,
    PreferencePair,
    StaticLayout,
    bucketed_batches,
    parse_pair,
    split_by_prompt,
)
from rewardmodel.lib.evaluate import predict_pair_rewards, preference_metrics
from rewardmodel.lib.graphs import GraphedSteps
from rewardmodel.lib.losses import TIE_PARAM_INIT, pair_loss
from rewardmodel.lib.model import RewardModel, build_reward_model, save_reward_model, split_pair_rewards
from rewardmodel.lib.ranks import SOLO, Team, current_team
from rewardmodel.lib.runtime import (
    forward_context,
    matmul_precision,
    resolve_autocast_dtype,
    resolve_compile,
    resolve_cuda_graphs,
    resolve_device,
    resolve_flat_tokens,
)
from rewardmodel.lib.sharding import (
    finish_gradients,
    gather_weights,
    resolve_parallel,
    shard_reward_model,
    sharded_runs,
    whole_reward_model,
)

ProgressFn = Callable[[int, int, dict[str, float]], None]
#: The `PairBatch` tensors a CUDA-graphed step reads (fixed shapes under a `StaticLayout`).
GRAPH_INPUTS = ("input_ids", "attention_mask", "position_ids", "last_index", "first_index", "tie", "margin")


@dataclass(frozen=True)
class RewardResult:
    """What a run produced. `metrics` holds eval metrics (prefixed "eval_") and train
    summary figures; `history` one dict per optimizer step."""

    config: RewardConfig
    out_dir: str
    meta_path: str
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _use_prefix_sharing(config: RewardConfig, model: RewardModel) -> bool:
    if config.prefix_sharing == "off":
        return False
    supported = model.supports_prefix_sharing()
    if config.prefix_sharing == "on" and not supported:
        raise ValueError(f"prefix sharing is not supported for {model.backbone.config.model_type} / {model.pooling}")
    return supported


def _optimizer(model: RewardModel, config: RewardConfig, device: torch.device, *,
               graphs: bool = False) -> torch.optim.Optimizer:
    """AdamW; for CUDA graphs its step counter and learning rate live on the GPU (`capturable`)."""
    # Like transformers' Trainer: no weight decay on biases and norm weights (1-D tensors).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if graphs:  # one learning-rate tensor per group, changed in place by `_set_lr`
        for group in groups:
            group["lr"] = torch.tensor(config.learning_rate, dtype=torch.float32, device=device)
    # The fused kernel is one pass over each tensor; it exists on CPU and CUDA in recent torch.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=fused, capturable=graphs)


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate factor after `step` optimizer steps: linear warm-up, then linear decay to 0."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; a tensor one is filled in place (no GPU-to-CPU read)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def _micro_batches(pairs: Sequence[EncodedPair], config: RewardConfig, *, shared: bool, pack: bool) -> list[list[int]]:
    """Index batches for all epochs (a fractional last epoch is cut short)."""
    lengths = [p.shared_length if shared else p.padded_length for p in pairs]
    bucket_size = config.bucket_size or (1 if pack else 64)
    per_epoch = math.ceil(len(pairs) / config.batch_size)
    total = max(1, math.ceil(config.epochs * per_epoch))
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        rng = random.Random(config.seed * 1_000_003 + epoch)
        batches += bucketed_batches(lengths, config.batch_size, bucket_size=bucket_size, rng=rng)
        epoch += 1
    return batches[:total]


def _prefetched(items: Sequence[Any], make: Callable[[Any], Any], *, ahead: bool) -> Iterator[Any]:
    """`make(item)` for each item in order; with `ahead`, the next one is made on a
    helper thread while the caller works on the current one.

    On a GPU, laying out a batch (CPU work) then overlaps the previous step's
    kernels instead of leaving the GPU idle; on a CPU the two would only fight
    for the same cores.
    """
    if not ahead or len(items) < 2:
        yield from (make(item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="collate") as pool:
        pending = pool.submit(make, items[0])
        for item in items[1:]:
            ready = pending.result()
            pending = pool.submit(make, item)
            yield ready
        yield pending.result()


def train_reward_model(
    config: RewardConfig,
    pairs: Iterable[PreferencePair | Mapping[str, Any]],
    out_dir: str | Path,
    progress: ProgressFn | None = None,
    *,
    snapshot_sha256: str | None = None,
) -> RewardResult:
    """Train, evaluate on held-out prompts, save to `out_dir`, and return the result.

    `pairs` are `PreferencePair`s or raw snapshot/TRL records. `progress(step,
    total_steps, metrics)` is called after every optimizer step; on a GPU one
    step late, so that reading the step's loss never stalls the next step.
    Raises ValueError when no trainable pair is left (e.g. only ties with loss "bt").
    """
    started = time.perf_counter()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    _set_seed(config.seed)
    device = resolve_device(config)
    team = current_team()
    with matmul_precision(config, device):
        run, graphed = _setup(config, pairs, device, team)
        setup_s = time.perf_counter() - started
        history, totals, train_s = _loop(run, graphed, progress)
        totals = team.sum_values(totals, device)
        weights = gather_weights(run.model) if run.sharded else None  # collective: every rank takes part
        team.barrier()  # every rank has finished its last step: rank 0 alone evaluates and saves
        if not team.main:
            return RewardResult(config=config, out_dir=str(out_dir), meta_path="", metrics={}, history=history)
        if weights is not None:
            _make_whole(run, weights)
        metrics = _summary(run, graphed, history, totals, train_s=train_s, setup_s=setup_s)
        meta = {
            "config": config.to_dict(),
            "parallel": "shard" if run.sharded else "replicate",
            "snapshot_sha256": snapshot_sha256,
            "metrics": metrics,
            "backbone_type": run.model.backbone.config.model_type,
        }
        meta_path = save_reward_model(run.model, out_dir, meta)
    return RewardResult(config=config, out_dir=str(out_dir), meta_path=str(meta_path), metrics=metrics, history=history)


@dataclass
class _Run:
    """What `_setup` builds for one run, for the loop and the summary (mutable: model and optimizer train).

    `train_all`: every encoded training pair; `train_set`: those the loss learns from (ties dropped
    unless the loss models them); `batches`: index lists into `train_set`, all epochs in order;
    `shares`: this rank's part of each batch (the whole batch alone, see `training.lib.distributed`);
    `runs`: the pairs this rank runs for each batch: its share, or when `sharded` and the share is
    empty the batch's first pair, whose loss counts 0 (see `rewardmodel.lib.sharding`);
    `boot`: per-pair loss weights [len(train_set), ensemble_size] (bootstrap resample counts for an
    ensemble, times the confidence weights with `weight_by_confidence`), or None for neither; `forward`: the
    model or its compiled self. (The CUDA-graphed steps hold `whole_step`, so they live beside the
    run, not in it: no reference cycle keeps the model's memory after the run.)
    """

    config: RewardConfig
    device: torch.device
    autocast_dtype: torch.dtype | None
    model: RewardModel
    forward: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer
    lr_factor: Callable[[int], float]
    collate: PairCollator
    train_all: list[EncodedPair]
    train_set: list[EncodedPair]
    eval_raw: list[PreferencePair]
    eval_set: list[EncodedPair]
    batches: list[list[int]]
    boot: torch.Tensor | None
    total_steps: int
    shared: bool
    pack: bool
    team: Team = SOLO
    shares: list[list[int]] = field(default_factory=list)
    runs: list[list[int]] = field(default_factory=list)
    sharded: bool = False

    def lay_out(self, idx: list[int]) -> Any:
        """The batch of these training pairs on the device; None for none (a rank's empty share)."""
        return self.collate([self.train_set[j] for j in idx]).to(self.device) if idx else None

    def share_scale(self, idx: list[int], share: list[int]) -> float:
        """This rank's part of the batch's loss: its pairs (or bootstrap weight) over the whole batch's."""
        if self.team.solo:
            return 1.0
        if self.boot is None:
            return len(share) / len(idx)
        return float(self.boot[share].sum() / self.boot[idx].sum().clamp_min(1e-8))

    def forward_loss(self, batch: Any, weights: torch.Tensor | None, *,
                     cache_casts: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, correctly ordered strict pairs) of one batch, both still on the device."""
        config = self.config
        with forward_context(self.device, self.autocast_dtype, cache_casts=cache_casts):
            chosen, rejected = split_pair_rewards(self.forward, batch)
            loss = pair_loss(
                config.loss,
                chosen.float(),
                rejected.float(),
                tie=batch.tie,
                margin=batch.margin if config.margin_enabled else None,
                tie_param=self.model.tie_param,
                weights=weights,
            )
        diff = (chosen - rejected).detach().float().mean(dim=1)
        strict = (~batch.tie).float()
        return loss, (((diff > 0).float() + 0.5 * (diff == 0).float()) * strict).sum()

    def whole_step(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step on one batch, fit for CUDA graph capture (see `rewardmodel.lib.graphs`)."""
        self.optimizer.zero_grad(set_to_none=True)
        batch = types.SimpleNamespace(**inputs, owner=None, token_index=None)
        loss, correct = self.forward_loss(batch, inputs.get("weights"), cache_casts=False)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return {"loss": loss.detach(), "correct": correct, "grad_norm": grad_norm}


def _run_mode(config: RewardConfig, device: torch.device, team: Team) -> str:
    """The mode this run trains in ("auto" resolved; under torchrun already agreed by every rank)."""
    from training.lib.modes import resolve_run_mode

    return resolve_run_mode(config, kind="reward_model", device=device, ranks=team.size).mode


def _setup(config: RewardConfig, pairs: Iterable[PreferencePair | Mapping[str, Any]],
           device: torch.device, team: Team = SOLO) -> tuple[_Run, GraphedSteps | None]:
    """Split, encode and batch the pairs; build the model, the optimizer and, where they apply, the step graphs."""
    autocast_dtype = resolve_autocast_dtype(config, device)
    all_pairs = [p if isinstance(p, PreferencePair) else parse_pair(p) for p in pairs]
    train_raw, eval_raw = split_by_prompt(all_pairs, config.eval_fraction, config.seed)

    sharded = not team.solo and resolve_parallel(config.parallel, _run_mode(config, device, team), team) == "shard"
    # Sharded: loaded on the CPU; each layer moves to the device as its shard (one layer whole at a time).
    model = build_reward_model(config, device=device, load_device=torch.device("cpu") if sharded else None)
    if model.backbone.dtype != torch.float32:
        autocast_dtype = None  # low-precision weights compute in their own dtype
    model.flat_tokens = model.flat_tokens and resolve_flat_tokens(config, device)
    with torch.no_grad():
        model.tie_param.fill_(TIE_PARAM_INIT.get(config.loss, 0.0))
    model.tie_param.requires_grad_(config.loss in TIE_LOSSES)
    formatter = model.formatter
    train_all = formatter.encode(train_raw, config.max_length, config.margin_scale)
    eval_set = formatter.encode(eval_raw, config.max_length, config.margin_scale)
    train_set = train_all if config.loss in TIE_LOSSES else [p for p in train_all if not p.tie]
    if not train_set:
        raise ValueError(f"no trainable pairs: {len(train_all)} train pairs, all ties, loss={config.loss!r}")
    shared = _use_prefix_sharing(config, model)
    pack = config.packing and model.supports_packing()
    collate = PairCollator(model.pad_id, shared_prefix=shared, pack=pack, causal=model.causal, mask_device=device)
    batches = _micro_batches(train_set, config, shared=shared, pack=pack)
    # Each ensemble head sees its own bootstrap resample of the pairs (Poisson(1)
    # weights), so the heads disagree where the data underdetermine the reward.
    boot = None
    if config.ensemble_size > 1:
        generator = torch.Generator().manual_seed(config.seed)
        boot = torch.poisson(torch.ones(len(train_set), config.ensemble_size), generator=generator)
    if config.weight_by_confidence:
        confidence = torch.tensor([[p.weight] for p in train_set], dtype=torch.float32)
        if not confidence.any():
            raise ValueError("weight_by_confidence: every training pair has weight 0 (confidence 0.5 or none above)")
        boot = confidence.expand(-1, config.ensemble_size).clone() if boot is None else boot * confidence
    total_steps = math.ceil(len(batches) / config.grad_accum)
    if not team.solo and config.cuda_graphs == "on":
        raise ValueError("cuda_graphs='on' needs one process: a step of several ranks sums gradients between them")
    use_graphs = team.solo and resolve_cuda_graphs(config, device, packed=pack, pooling=model.pooling)
    if use_graphs:
        # Fixed shapes: rows of one width, a few row counts, no data-sized flat-token layout.
        model.flat_tokens = False
        layout = StaticLayout.plan([collate.units([train_set[j] for j in idx]) for idx in batches])
        collate = PairCollator(model.pad_id, shared_prefix=shared, pack=pack, causal=model.causal,
                               mask_device=device, layout=layout)
    if sharded:
        model = shard_reward_model(model, device, team)
    else:
        team.broadcast(p for p in model.parameters() if p.requires_grad)
    optimizer = _optimizer(model, config, device, graphs=use_graphs)
    lr_factor = _linear_schedule(int(config.warmup_ratio * total_steps), total_steps)
    _set_lr(optimizer, config.learning_rate * lr_factor(0))
    forward: Callable[..., torch.Tensor] = model
    if resolve_compile(config, device):
        model.final_layer_shortcut = False  # swaps modules mid-forward, which a compiled graph must not see
        forward = torch.compile(model, dynamic=True)

    model.train()
    shares = [team.share(b) for b in batches]
    run = _Run(config, device, autocast_dtype, model, forward, optimizer, lr_factor, collate, train_all, train_set,
               eval_raw, eval_set, batches, boot, total_steps, shared, pack, team, shares,
               sharded_runs(batches, shares) if sharded else shares, sharded)
    return run, GraphedSteps(run.whole_step) if use_graphs else None


def _make_whole(run: _Run, weights: Mapping[str, torch.Tensor]) -> None:
    """Rank 0 after a sharded run: the run's model becomes an unsharded one holding the gathered
    `weights` on the device, for evaluation and saving; the shards' AdamW state is freed first."""
    run.optimizer.state.clear()
    run.model = run.forward = whole_reward_model(run.config, weights, like=run.model, device=run.device)


def _loop(run: _Run, graphed: GraphedSteps | None,
          progress: ProgressFn | None) -> tuple[list[dict[str, float]], dict[str, int], float]:
    """Every optimizer step of the run: (history, pair and token totals, seconds in the loop)."""
    config, model, optimizer = run.config, run.model, run.optimizer
    history: list[dict[str, float]] = []
    totals = {"pairs": 0, "tokens": 0, "computed": 0, "padded": 0}
    # The window's loss and correct count stay on the device until the step is reported:
    # reading them is a sync, which would drain the GPU's queue every step.
    window: dict[str, Any] = {"loss": 0.0, "correct": 0.0, "pairs": 0}
    unreported: dict[str, Any] | None = None
    steps_done = 0
    epoch_batches = math.ceil(len(run.train_set) / config.batch_size)
    on_gpu = run.device.type == "cuda"
    loop_start = time.perf_counter()
    team = run.team
    if not team.main:
        progress = None  # rank 0 reports for all
    for i, (idx, share, batch) in enumerate(zip(run.batches, run.shares,
                                               _prefetched(run.runs, run.lay_out, ahead=on_gpu), strict=True)):
        weights = None if run.boot is None else run.boot[run.runs[i]].to(run.device)
        if batch is None:  # a short batch left this rank nothing: it adds no gradient
            loss, correct = torch.zeros((), device=run.device), 0.0
        elif graphed is not None:
            inputs = {name: getattr(batch, name) for name in GRAPH_INPUTS}
            if weights is not None:
                inputs["weights"] = weights
            # A short last batch of an epoch runs once: not worth a capture.
            out = graphed(inputs) if len(idx) == config.batch_size else graphed.eager(inputs)
            loss, correct, grad_norm = out["loss"], out["correct"], out["grad_norm"]
        else:
            scale = run.share_scale(idx, share)  # 0 for a sharded rank's stand-in pair (an empty share)
            loss, correct = run.forward_loss(batch, weights)
            (loss * scale / config.grad_accum).backward()
            loss, correct = loss * scale, correct if share else 0.0
        window["loss"] = window["loss"] + loss.detach() * len(idx)
        window["correct"] = window["correct"] + correct
        window["pairs"] += len(share)
        if share:
            totals["pairs"] += len(share)
            totals["tokens"] += batch.real_tokens
            totals["computed"] += batch.computed_tokens
            totals["padded"] += batch.padded_tokens
        if (i + 1) % config.grad_accum and i + 1 != len(run.batches):
            continue
        if run.sharded:  # the shards' gradients were summed by FSDP's reduce-scatter at each backward
            grad_norm = finish_gradients(model.parameters(), team, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        elif graphed is None:
            team.sum_gradients(p for p in model.parameters() if p.requires_grad)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        steps_done += 1
        lr = config.learning_rate * run.lr_factor(steps_done)  # for the next step, as a LambdaLR reports it
        _set_lr(optimizer, lr)
        seen = {"pairs_seen": totals["pairs"], "tokens_seen": totals["tokens"]}
        if not team.solo:  # the ranks' figures summed (a sync each step, as the gradient sum is)
            summed = team.sum_values({"loss": float(window["loss"]), "correct": float(window["correct"]),
                                      "pairs": window["pairs"], **seen}, run.device)
            seen = {k: summed.pop(k) for k in seen}
            window = summed
        finished = {**window, "grad_norm": grad_norm, "lr": lr, "epoch": (i + 1) / epoch_batches, **seen}
        window = {"loss": 0.0, "correct": 0.0, "pairs": 0}
        if unreported is not None:
            _report(unreported, history, run.total_steps, loop_start, progress)
        unreported = finished
        if not on_gpu:
            _report(unreported, history, run.total_steps, loop_start, progress)
            unreported = None
    if unreported is not None:
        _report(unreported, history, run.total_steps, loop_start, progress)
    return history, totals, time.perf_counter() - loop_start


def _report(done: dict[str, Any], history: list[dict[str, float]], total_steps: int, loop_start: float,
            progress: ProgressFn | None) -> None:
    """Append a finished step's log entry to `history` (reading its device values), then call `progress`."""
    entry = {
        "step": float(len(history) + 1),
        "epoch": done["epoch"],
        "loss": float(done["loss"]) / done["pairs"],
        "accuracy": float(done["correct"]) / max(1, done["pairs"]),
        "lr": done["lr"],
        "grad_norm": float(done["grad_norm"]),
    }
    elapsed = time.perf_counter() - loop_start  # after the floats above: the step has finished
    entry.update({
        "elapsed_s": elapsed,
        "pairs_seen": float(done["pairs_seen"]),
        "tokens_seen": float(done["tokens_seen"]),
        "pairs_per_s": done["pairs_seen"] / elapsed,
        "tokens_per_s": done["tokens_seen"] / elapsed,
    })
    history.append(entry)
    if progress is not None:
        progress(len(history), total_steps, entry)


def _summary(run: _Run, graphed: GraphedSteps | None, history: list[dict[str, float]], totals: dict[str, int], *,
             train_s: float, setup_s: float) -> dict[str, float]:
    """The run's metrics: data counts, layout, throughput, final loss and, with held-out prompts, "eval_" ones."""
    config, model = run.config, run.model
    train_all, eval_set = run.train_all, run.eval_set
    metrics: dict[str, float] = {
        "train_pairs": float(len(run.train_set)),
        "train_ties_skipped": float(len(train_all) - len(run.train_set)),
        "eval_prompts_held_out": float(len({p.group_key() for p in run.eval_raw})),
        "truncated_pairs": float(sum(p.prompt_truncated for p in train_all + eval_set)),
        "truncated_responses": float(sum(p.response_truncated for p in train_all + eval_set)),
        "padding_fraction": 1.0 - totals["computed"] / max(1, totals["padded"]),
        "prefix_sharing": float(run.shared),
        "packing": float(run.pack),
        "flat_tokens": float(model.flat_tokens and (run.shared or run.pack)),
        "cuda_graphs": float(graphed is not None and graphed.replays > 0),
        "cuda_graph_shapes": float(graphed.shapes if graphed is not None else 0),
        "train_seconds": train_s,
        "setup_seconds": setup_s,
        "pairs_per_s": totals["pairs"] / train_s,
        "tokens_per_s": totals["tokens"] / train_s,
        "optimizer_steps": float(run.total_steps),
        "final_train_loss": history[-1]["loss"],
    }
    if config.loss in TIE_LOSSES:
        metrics["tie_param"] = float(model.tie_param.detach())
    if eval_set:
        chosen_r, rejected_r = predict_pair_rewards(
            model, eval_set, batch_size=config.eval_batch_size, device=run.device,
            shared_prefix=run.shared, pack=run.pack, autocast_dtype=run.autocast_dtype,
        )
        evaluation = preference_metrics(chosen_r, rejected_r, eval_set, loss_name=config.loss, tie_param=model.tie_param)
        metrics.update({f"eval_{k}": v for k, v in evaluation.items()})
    return metrics
