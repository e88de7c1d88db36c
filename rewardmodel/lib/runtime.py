"""Run-time helpers shared by the three libraries (reward model, DPO, PPO).

What a run needs from the machine and the command line, apart from its
configuration (`rewardmodel.lib.config`, which stays free of torch):

* the device, autocast dtype, matmul precision, compile, flat-token and
  CUDA-graph choices that a `RewardConfig`'s "auto" values resolve to here;
* `forward_context` / `attention_kernels`: the autocast and attention
  kernels every forward pass of the libraries runs under;
* `add_config_options`: one command-line option per field of a config
  dataclass, for the libraries' command lines.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import typing
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from rewardmodel.lib.config import RewardConfig


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, skip: Collection[str] = (), help: Mapping[str, str] | None = None) -> None:
    """One command-line option per field of the config dataclass ``cls`` (``--max-length`` for ``max_length``).

    Typed from the default (from the annotation when the default is None); booleans become
    ``--x`` / ``--no-x``; Literal fields get their values as choices. ``skip``: fields the
    command line adds itself.
    """
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


def resolve_device(config: RewardConfig) -> torch.device:
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
        # bitsandbytes' 4-bit kernels are untested under graph capture here (no GPU in the tests).
        "a backbone that is not 4-bit (mode other than 'qlora')": config.mode != "qlora",
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
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def forward_context(device: torch.device, autocast_dtype: torch.dtype | None, *,
                    cache_casts: bool = True) -> contextlib.ExitStack:
    """Autocast to `autocast_dtype` (None: plain fp32) plus `attention_kernels(device)`, for one forward pass.

    `cache_casts=False` turns off autocast's cache of cast weights, which a CUDA graph capture must not use.
    """
    stack = contextlib.ExitStack()
    if autocast_dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=autocast_dtype, cache_enabled=cache_casts))
    stack.enter_context(attention_kernels(device))
    return stack
