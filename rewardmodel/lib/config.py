"""Configuration of a Bradley–Terry reward-model training run.

`RewardConfig` is frozen: a run is described once, recorded in `meta.json`,
and never mutated. Runtime choices that depend on the machine ("auto"
device, dtype, compile, pooling) are resolved by the small helpers below,
so the recorded config stays what the user asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:  # torch is imported where it is used: validating a config must stay cheap (web processes)
    import torch

LossName = Literal["bt", "bt_margin", "davidson", "rao_kupper"]
Pooling = Literal["auto", "last", "mean", "cls"]

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


def add_config_options(parser: Any, cls: type, *, skip: Collection[str] = (), help: Mapping[str, str] | None = None) -> None:
    """One command-line option per field of the config dataclass ``cls`` (``--max-length`` for ``max_length``).

    Typed from the default (from the annotation when the default is None); booleans become
    ``--x`` / ``--no-x``; Literal fields get their values as choices. ``skip``: fields the
    command line adds itself.
    """
    import argparse
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        text = (help or {}).get(f.name, f"default: {f.default}")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
            continue
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        kind = type(f.default) if f.default is not None else next(
            a for a in typing.get_args(hint) if a is not type(None))
        parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=text)


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
        "auto": on for the CPU only (see `resolve_flat_tokens`).
    device: "auto" = cuda if available, else cpu.
    dtype: "auto" = fp32 weights and activations; on a CUDA GPU its matmuls
        run in TF32 (inputs rounded to a 10-bit mantissa, fp32 accumulation;
        see `matmul_precision`). "fp32" = strict fp32 matmuls everywhere.
        "tf32" = TF32 matmuls on a GPU (plain fp32 on a CPU). "bf16" = bf16
        autocast, accepted on a CPU only where it has bf16 instructions.
    compile: "auto" = off (see `resolve_compile`); "on" compiles the model.
    cuda_graphs: on a CUDA GPU, replay each training step (forward, backward,
        clipping, AdamW) from a CUDA graph captured once per batch shape, so the
        CPU launches one graph instead of thousands of kernels. Batches are then
        packed into rows of one fixed width and a few row counts (see
        `rewardmodel.lib.graphs`). Needs packing, "last" or "cls" pooling and
        grad_accum 1. "auto": see `resolve_cuda_graphs`; "on" refuses a setup
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
    eval_fraction: float = 0.1
    pooling: Pooling = "auto"
    prefix_sharing: Literal["auto", "on", "off"] = "auto"
    packing: bool = True
    flat_tokens: Literal["auto", "on", "off"] = "auto"
    device: str = "auto"
    dtype: Literal["auto", "fp32", "tf32", "bf16"] = "auto"
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
            f"flat_tokens must be auto, on or off, not {self.flat_tokens!r}": self.flat_tokens in ("auto", "on", "off"),
            f"cuda_graphs must be auto, on or off, not {self.cuda_graphs!r}": self.cuda_graphs in ("auto", "on", "off"),
        }
        self._require(checks)

    @property
    def margin_enabled(self) -> bool:
        return self.use_margin or self.loss == "bt_margin"

def resolve_device(config: RewardConfig) -> torch.device:
    import torch

    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX); Linux only, else False."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_autocast_dtype(config: RewardConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for forward passes, or None for plain fp32.

    Weights and optimizer state stay fp32 in every case; bf16 only enters
    through autocast, and only when asked for. An explicit "bf16"
    on a CPU is allowed only with native bf16 instructions: without them
    bf16 matmuls are emulated and far slower than fp32, while with them
    (e.g. AMD Zen 4 / Intel Sapphire Rapids) they run ~4x faster.
    """
    import torch

    if device.type != "cuda":
        if config.dtype == "bf16" and not cpu_has_native_bf16():
            raise ValueError("dtype='bf16' on a CPU without bf16 instructions is refused: far slower than fp32")
        return torch.bfloat16 if config.dtype == "bf16" else None
    # "auto" is fp32 (with TF32 matmuls, see `matmul_precision`) on a GPU too. On an H100
    # (docs/benchmarks.md) bf16 autocast ran 1.2x faster than that on all-MiniLM-L6-v2 and
    # 0.9x on SmolLM2-135M: these steps are short, and autocast adds a cast kernel per matmul
    # to a step the CPU already bounds. "auto" keeps activations out of bf16's 8-bit
    # mantissa; ask for "bf16" where it pays, as on large backbones.
    if config.dtype == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise ValueError("dtype='bf16' on a GPU without bf16 support")
        return torch.bfloat16
    return None


def matmul_precision(config: RewardConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """TF32 matmuls for fp32 work on a CUDA GPU when `dtype` is "auto" or "tf32", for the duration.

    On an H100 a strict-fp32 step of SmolLM2-135M spent ~65% of its GPU time in
    fp32 matmuls (docs/benchmarks.md); TF32 runs them on the tensor cores.
    Weights, activations, reductions and the optimizer stay fp32. The previous
    process-wide setting is restored on exit. Elsewhere nothing changes.
    """
    if device.type != "cuda" or config.dtype not in ("auto", "tf32"):
        return contextlib.nullcontext()
    return _float32_matmul_precision("high")


@contextlib.contextmanager
def _float32_matmul_precision(precision: str) -> Iterator[None]:
    import torch

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def resolve_compile(config: RewardConfig, device: torch.device) -> bool:
    """torch.compile only when asked for ("on"); "auto" is off.

    Measured on an H100 (docs/benchmarks.md): with length-bucketed and packed
    batches every new shape recompiles, and a compiled all-MiniLM-L6-v2 run did
    not finish 38 steps in 90 s that take 3 s eagerly.
    """
    return config.compile == "on"


def resolve_flat_tokens(config: RewardConfig, device: torch.device) -> bool:
    """Flat-token layers on the CPU, where a step is bound by arithmetic; not on a GPU by default.

    On this repository's 2-core CPU, SmolLM2-135M steps ran 4-7% faster at 2-10% padding. On an
    H100 at batch 16, where a step is bound by kernel launches, the extra scatter and gather per
    layer made steps 16-25% slower (docs/benchmarks.md).
    """
    if config.flat_tokens == "auto":
        return device.type == "cpu"
    return config.flat_tokens == "on"


def resolve_cuda_graphs(config: RewardConfig, device: torch.device, *, packed: bool, pooling: str) -> bool:
    """Whether training steps replay from CUDA graphs (`rewardmodel.lib.graphs`).

    A graph needs what stays the same from step to step: packed rows (one fixed layout),
    "last" or "cls" pooling (mean pooling sizes its output from the data), one batch per
    optimizer step, no torch.compile. "auto" takes graphs on a CUDA GPU whenever those hold;
    "on" raises ValueError naming what stops them.
    """
    if config.cuda_graphs == "off":
        return False
    blockers = {
        "a CUDA device": device.type == "cuda",
        "packed rows (packing=True on a Llama-family or BERT backbone)": packed,
        f"'last' or 'cls' pooling, not {pooling!r}": pooling in ("last", "cls"),
        "grad_accum=1": config.grad_accum == 1,
        "compile off": config.compile != "on",
    }
    missing = [need for need, ok in blockers.items() if not ok]
    if missing and config.cuda_graphs == "on":
        raise ValueError("cuda_graphs='on' needs " + ", ".join(missing))
    return not missing


def attention_kernels(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The scaled-dot-product-attention kernels a forward pass on `device` may use.

    On CUDA every kernel but cuDNN attention: PyTorch prefers it on Hopper for
    bf16, and it builds an execution plan for each new shape, 2-3 ms of CPU
    per call in a profile of a bf16 SmolLM2-architecture step on an H100
    (GPU work: 40-80 us), about a quarter of the step. Our batches change shape
    every step. Elsewhere nothing changes.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def forward_context(device: torch.device, autocast_dtype: torch.dtype | None, *,
                    cache_casts: bool = True) -> contextlib.ExitStack:
    """Autocast to `autocast_dtype` (None: plain fp32) plus `attention_kernels(device)`, for one forward pass.

    `cache_casts=False` turns off autocast's cache of cast weights, which a CUDA graph capture must not use.
    """
    import torch

    stack = contextlib.ExitStack()
    if autocast_dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=autocast_dtype, cache_enabled=cache_casts))
    stack.enter_context(attention_kernels(device))
    return stack
