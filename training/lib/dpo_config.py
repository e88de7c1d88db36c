"""The DPO run's configuration: a frozen dataclass that validates itself.

Kept apart from `training.lib.dpo` so that checking a configuration (in a web
process, before a run is queued) imports neither torch nor transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rewardmodel.lib.config import (
    MODE_SETTINGS,
    PARALLEL_SETTINGS,
    WEIGHTS_SETTINGS,
    ConfigBase,
    Mode,
    Parallel,
    Weights,
)

__all__ = ["LOSS_NAMES", "PARALLEL_SETTINGS", "DPOConfig", "LossName"]

LossName = Literal["sigmoid", "ipo", "robust"]
LOSS_NAMES: tuple[str, ...] = ("sigmoid", "ipo", "robust")


@dataclass(frozen=True)
class DPOConfig(ConfigBase):
    """Everything that defines a DPO run (recorded in the checkpoint's meta.json).

    model: alias ("smollm2"), local folder or hub id (see `resolve_model`).
    beta: β, strength of the pull towards the reference (IPO: its τ).
    loss: "sigmoid" (DPO; cDPO with label_smoothing > 0), "ipo", "robust" (rDPO).
    label_smoothing: ε, the assumed label-flip rate, in [0, 0.5).
    batch_size: pairs per micro-batch; grad_accum micro-batches per step.
    epochs: passes over the pairs (fractional allowed); max_steps, if set,
        is the number of optimizer steps instead.
    max_length / max_prompt_length: tokens per prompt+response / per prompt
        (see `dpo_data` for the truncation rule; pairs are never dropped).
    mode: "full" = every weight trains; "lora" = LoRA adapters (lora_r, lora_alpha,
        lora_dropout, lora_target_modules) instead; "qlora" = adapters over a 4-bit NF4
        base (CUDA and bitsandbytes only; refused elsewhere before anything loads);
        "auto" = "full" off CUDA, and on a GPU the first of full, LoRA, QLoRA that
        `training.lib.memory` says fits its free memory (`training.lib.modes`).
        The checkpoint's meta.json records the mode the run resolved to.
    lora: the older spelling of mode="lora": True turns "auto" into "lora" (and
        contradicts "full"); the "lora" and "qlora" modes set it. lora_merge saves
        merged weights (a QLoRA run's merged into its base reloaded in the base's
        own dtype), else the adapter alone.
    precompute_ref: reference log-probs once before training (else per step).
    shared_prefix: "auto" = on for architectures in SHARED_PREFIX_TYPES.
    device: "auto" = cuda if available. dtype: "auto" = bf16 autocast on a
        bf16-capable GPU, else fp32; "bf16" on a CPU is refused. Autocast applies
        only where the weights are fp32.
    weights: the dtype the policy's weights train in; the checkpoint is saved in
        the base model's own dtype either way (see `rewardmodel.lib.precision`).
        "auto" = the base's stored dtype (bf16 weights and AdamW state, no
        autocast) on a CUDA GPU with bf16, fp32 elsewhere; "fp32" = fp32 weights
        and AdamW state (fp32 master weights) with `dtype`'s autocast, as before
        the setting existed; "checkpoint" = the stored dtype on any device. At
        the default learning_rate (1e-6) bf16 weights round most updates away:
        ask for "fp32" there. LoRA adapters train in fp32 over any base.
    parallel: how several ranks under torchrun (`training.lib.distributed`) hold
        the policy. "replicate" = each rank a whole copy (weights, gradients,
        AdamW state), gradients summed once per optimizer step; "shard" = FSDP2
        (`training.lib.sharding`): each rank holds 1/N of every weight, gradient
        and AdamW moment, so a policy whose training state outgrows one GPU
        trains in full across the GPUs of one node; full fine-tuning only.
        "auto" = "shard" when several ranks run full fine-tuning, "replicate"
        for LoRA and QLoRA (their trainable state is small: whole replicas
        cost less than gathering every weight at every forward). One process:
        always a whole model. meta.json records what the run resolved to.
    gradient_checkpointing: recompute each layer's activations in the backward
        pass instead of keeping them (less memory, about a third more compute).
    bucket_size: batches per length-sorting window (bigger: less padding,
        less shuffling). ref_batch_size: pairs per reference batch (default
        2 x batch_size). num_threads: torch CPU threads (0 = torch default).
    """

    model: str
    beta: float = 0.1
    loss: LossName = "sigmoid"
    label_smoothing: float = 0.0
    learning_rate: float = 1e-6
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    max_prompt_length: int = 512
    mode: Mode = "auto"
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | str = "all-linear"
    lora_merge: bool = True
    precompute_ref: bool = True
    seed: int = 0
    device: str = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    weights: Weights = "fp32"  # bf16 weights round away small updates; "auto" opts in
    max_steps: int | None = None
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    shared_prefix: Literal["auto", "on", "off"] = "auto"
    parallel: Parallel = "auto"
    gradient_checkpointing: bool = False
    bucket_size: int = 64
    ref_batch_size: int | None = None
    num_threads: int = 0

    def __post_init__(self) -> None:
        checks = {
            f"unknown loss {self.loss!r} (expected one of {LOSS_NAMES})": self.loss in LOSS_NAMES,
            "beta must be > 0": self.beta > 0,
            "label_smoothing must be in [0, 0.5)": 0.0 <= self.label_smoothing < 0.5,
            "batch_size and grad_accum must be >= 1": self.batch_size >= 1 and self.grad_accum >= 1,
            "epochs must be > 0": self.epochs > 0,
            "max_steps must be >= 1": self.max_steps is None or self.max_steps >= 1,
            "need 0 < max_prompt_length < max_length": 0 < self.max_prompt_length < self.max_length,
            f"unknown dtype {self.dtype!r}": self.dtype in ("auto", "fp32", "bf16"),
            f"weights must be one of {WEIGHTS_SETTINGS}, not {self.weights!r}": self.weights in WEIGHTS_SETTINGS,
            f"unknown shared_prefix {self.shared_prefix!r}": self.shared_prefix in ("auto", "on", "off"),
            "warmup_ratio must be in [0, 1]": 0.0 <= self.warmup_ratio <= 1.0,
            f"mode must be one of {MODE_SETTINGS}, not {self.mode!r}": self.mode in MODE_SETTINGS,
            "lora=True contradicts mode='full'": not (self.lora and self.mode == "full"),
            f"parallel must be one of {PARALLEL_SETTINGS}, not {self.parallel!r}": self.parallel in PARALLEL_SETTINGS,
            "parallel='shard' shards full fine-tuning only, not LoRA or QLoRA":
                not (self.parallel == "shard" and (self.lora or self.mode in ("lora", "qlora"))),
        }
        self._require(checks)
        # `lora` and `mode` say the same thing twice; keep them in step (the config stays frozen to callers).
        if self.lora and self.mode == "auto":
            object.__setattr__(self, "mode", "lora")
        object.__setattr__(self, "lora", self.mode in ("lora", "qlora"))
