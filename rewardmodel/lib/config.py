"""Configuration of a Bradley–Terry reward-model training run.

`RewardConfig` is frozen: a run is described once, recorded in `meta.json`,
and never mutated. Runtime choices that depend on the machine ("auto"
device, dtype, compile, pooling) are resolved in `rewardmodel.lib.runtime`,
so the recorded config stays what the user asked for. `ConfigBase` is shared
by the DPO and PPO configs too.

Imports neither torch nor transformers: web processes validate run configs
with these classes (tests/rewardmodel/test_lib_purity.py checks it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

LossName = Literal["bt", "bt_margin", "davidson", "rao_kupper"]
Pooling = Literal["auto", "last", "mean", "cls"]

#: Values of every run config's `weights` setting (resolved in `rewardmodel.lib.precision`).
WEIGHTS_SETTINGS: tuple[str, ...] = ("auto", "fp32", "checkpoint")
Weights = Literal["auto", "fp32", "checkpoint"]
#: Values of every run config's `mode` setting (resolved in `training.lib.modes`).
MODE_SETTINGS: tuple[str, ...] = ("auto", "full", "lora", "qlora")
Mode = Literal["auto", "full", "lora", "qlora"]
#: Values of every run config's `parallel` setting (resolved by `training.lib.sharding.resolve_parallel`).
PARALLEL_SETTINGS: tuple[str, ...] = ("auto", "replicate", "shard")
Parallel = Literal["auto", "replicate", "shard"]

#: Losses that learn from tie pairs; the others skip ties during training.
TIE_LOSSES: frozenset[str] = frozenset({"davidson", "rao_kupper"})


class ConfigBase:
    """What every run configuration shares: checks, and a round trip through meta.json."""

    def _require(self, checks: dict[str, bool]) -> None:
        """Raise one ValueError naming every failed check (message -> condition that must hold)."""
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a dict (e.g. a meta.json), ignoring unknown keys; JSON lists become tuples where a tuple is due."""
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                value = data[f.name]
                values[f.name] = tuple(value) if isinstance(value, list) and "tuple" in str(f.type) else value
        return cls(**values)


@dataclass(frozen=True)
class RewardConfig(ConfigBase):
    """Everything that defines a reward-model run.

    backbone: a local folder, a hub id, or an alias understood by
        `rewardmodel.lib.backbones.resolve_model` ("all-minilm-l6-v2", "smollm2").
    max_length: tokens per prompt+response sequence; longer pairs lose prompt
        tokens from the left (never the response, never the pair).
    batch_size: preference pairs per optimizer micro-batch (2x sequences).
    grad_accum: micro-batches per optimizer step.
    use_margin: subtract a margin derived from `strength` (see `margin_scale`)
        in the Bradley–Terry loss; `loss="bt_margin"` implies it.
    margin_scale: margin = margin_scale * (strength - 1) / 2, i.e. 0, 0.5, 1
        for slightly / clearly / much better at the default 1.0.
    loss: "bt" and "bt_margin" skip tie pairs; "davidson" and "rao_kupper"
        learn from them with one extra learned tie parameter.
    ensemble_size: number of scalar heads on the shared backbone (>= 1); with
        more than one, each head trains on its own bootstrap resample.
    weight_by_confidence: weight each pair's loss by 2 * confidence - 1, where
        confidence is the annotator reliability model's posterior of its chosen
        side (snapshots aggregated with ``model`` carry it): a sure pair counts
        fully, a coin flip not at all, a pair without one counts fully.
    eval_fraction: share of PROMPTS (not pairs) held out for evaluation.
    pooling: "auto" = first ([CLS]) token for encoders, last real token for
        causal LMs; "mean" averages real tokens.
    prefix_sharing: causal backbones only; "auto" encodes each prompt once
        for both responses when the architecture is known to support it.
    packing: pack several short sequences into one row (block-diagonal
        attention) on architectures known to take it (BERT, Llama family);
        others fall back to length bucketing alone.
    flat_tokens: on packed or shared-prefix rows (Llama family, BERT), run
        everything but attention on the real tokens alone, laid out
        flat, so projections and MLP never compute padding (see
        `RewardModel.flat_tokens`); "off": every layer runs on the padded rows;
        "auto": on for the CPU only (see `runtime.resolve_flat_tokens`).
    device: "auto" = cuda if available, else cpu.
    dtype: "auto" = fp32 weights and activations; on a CUDA GPU its matmuls
        run in TF32 (inputs rounded to a 10-bit mantissa, fp32 accumulation;
        see `runtime.matmul_precision`). "fp32" = strict fp32 matmuls everywhere.
        "tf32" = TF32 matmuls on a GPU (plain fp32 on a CPU). "bf16" = bf16
        autocast, accepted on a CPU only where it has bf16 instructions.
    weights: the dtype the backbone's weights train in; the saved model is in the
        backbone's own dtype either way (see `rewardmodel.lib.precision`). "auto" =
        the backbone's stored dtype (bf16 weights and AdamW state, no autocast) on
        a CUDA GPU with bf16, fp32 elsewhere; "fp32" = fp32 weights and AdamW state
        (fp32 master weights), bf16 only through `dtype`'s autocast; "checkpoint" =
        the stored dtype on any device, the CPU too. The heads stay fp32.
    mode: what trains (see `training.lib.modes`, which also states the automatic rule):
        "full" = every weight; "lora" = LoRA adapters on the backbone's linear layers
        (rank `lora_r`, scale `lora_alpha / lora_r`, no dropout) with the heads fully
        trained; "qlora" = the same over a 4-bit NF4 backbone (CUDA and bitsandbytes
        only; refused elsewhere before anything loads); "auto" = "full" off CUDA, and on
        a GPU the first of full, LoRA, QLoRA that `training.lib.memory` says fits its free
        memory. The adapters are merged into the backbone at save (a QLoRA backbone is
        reloaded in its checkpoint's dtype first), so the saved folder is the usual one.
    parallel: how several ranks under torchrun (`training.lib.distributed`) hold the model.
        "replicate" = each rank a whole copy (weights, gradients, AdamW state), gradients
        summed once per optimizer step; "shard" = FSDP2 (`rewardmodel.lib.sharding`): each
        rank holds 1/N of every weight, gradient and AdamW moment, so a backbone whose
        training state outgrows one GPU trains in full across the GPUs of one node; full
        fine-tuning only. "auto" = "shard" when several ranks run full fine-tuning,
        "replicate" for LoRA and QLoRA; one process: always a whole model (the rule of
        `DPOConfig.parallel`). meta.json's ``parallel`` records what the run resolved to.
    compile: "auto" = off (see `runtime.resolve_compile`); "on" compiles the model.
    cuda_graphs: on a CUDA GPU, replay each training step (forward, backward,
        clipping, AdamW) from a CUDA graph captured once per batch shape, so the
        CPU launches one graph instead of thousands of kernels. Batches are then
        packed into rows of one fixed width and a few row counts (see
        `rewardmodel.lib.graphs`). Needs packing, "last" or "cls" pooling and
        grad_accum 1. "auto": see `runtime.resolve_cuda_graphs`; "on" refuses a setup
        that cannot take graphs; "off": every step eager.
    bucket_size: batches per length-sorting window; larger = less padding,
        less randomness. 0 = auto: 1 (plain shuffled batches) when packing,
        where mixed lengths pack best, else 64. Sorted batches visibly slowed
        learning on all-MiniLM-L6-v2 (held-out 0.55 vs 0.63 after 15 steps).
    """

    backbone: str
    max_length: int = 512
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 1e-4
    epochs: float = 1.0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    use_margin: bool = False
    margin_scale: float = 1.0
    loss: LossName = "bt"
    ensemble_size: int = 1
    weight_by_confidence: bool = False
    eval_fraction: float = 0.1
    pooling: Pooling = "auto"
    prefix_sharing: Literal["auto", "on", "off"] = "auto"
    packing: bool = True
    flat_tokens: Literal["auto", "on", "off"] = "auto"
    device: str = "auto"
    dtype: Literal["auto", "fp32", "tf32", "bf16"] = "auto"
    weights: Weights = "fp32"  # bf16 weights round away small updates; "auto" opts in
    mode: Mode = "auto"
    parallel: Parallel = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    compile: Literal["auto", "on", "off"] = "auto"
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    gradient_checkpointing: bool = False
    bucket_size: int = 0
    eval_batch_size: int = 64
    num_threads: int = 0  # 0 = leave torch's default

    def __post_init__(self) -> None:
        checks = {
            "max_length must be >= 8": self.max_length >= 8,
            "batch_size must be >= 1": self.batch_size >= 1,
            "grad_accum must be >= 1": self.grad_accum >= 1,
            "epochs must be > 0": self.epochs > 0,
            "ensemble_size must be >= 1": self.ensemble_size >= 1,
            "eval_fraction must be in [0, 1)": 0.0 <= self.eval_fraction < 1.0,
            "warmup_ratio must be in [0, 1]": 0.0 <= self.warmup_ratio <= 1.0,
            f"unknown loss {self.loss!r}": self.loss in ("bt", "bt_margin", "davidson", "rao_kupper"),
            f"unknown pooling {self.pooling!r}": self.pooling in ("auto", "last", "mean", "cls"),
            f"unknown dtype {self.dtype!r}": self.dtype in ("auto", "fp32", "tf32", "bf16"),
            f"weights must be one of {WEIGHTS_SETTINGS}, not {self.weights!r}": self.weights in WEIGHTS_SETTINGS,
            f"mode must be one of {MODE_SETTINGS}, not {self.mode!r}": self.mode in MODE_SETTINGS,
            f"parallel must be one of {PARALLEL_SETTINGS}, not {self.parallel!r}": self.parallel in PARALLEL_SETTINGS,
            f"parallel='shard' shards full fine-tuning only, not mode={self.mode!r} (LoRA and QLoRA replicate)":
                not (self.parallel == "shard" and self.mode in ("lora", "qlora")),
            "lora_r and lora_alpha must be >= 1": self.lora_r >= 1 and self.lora_alpha >= 1,
            f"flat_tokens must be auto, on or off, not {self.flat_tokens!r}": self.flat_tokens in ("auto", "on", "off"),
            f"cuda_graphs must be auto, on or off, not {self.cuda_graphs!r}": self.cuda_graphs in ("auto", "on", "off"),
        }
        self._require(checks)

    @property
    def margin_enabled(self) -> bool:
        return self.use_margin or self.loss == "bt_margin"
