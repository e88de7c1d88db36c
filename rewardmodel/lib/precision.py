"""Which dtype a run's weights are stored, trained and saved in: the `weights` setting of every run config.

A checkpoint is saved in its base model's own dtype (`stored_dtype`), so a bf16
original gives bf16 checkpoints (half the disk of fp32) and an fp32 one (such as
a GGUF default dequantised to fp32) stays fp32. The weights *train* in the dtype
`weights_dtype` picks from the run's setting:

* "fp32": fp32 weights and fp32 AdamW state (the fp32 master copy), bf16 only
  through autocast where the run's `dtype` asks for it: the behaviour of every
  run before the setting existed;
* "checkpoint": the stored dtype itself, on any device (the CPU too: slow, but
  it exercises the low-precision path end to end);
* "auto": "checkpoint" on a CUDA GPU with bf16 support, "fp32" everywhere else
  (CPUs here have no fast bf16 training, and nothing on them may change).

A stored fp16 trains in bf16: pure fp16 weights would need loss scaling. With
low-precision weights there is no autocast (the matmuls already run in bf16)
and AdamW keeps its state in bf16 too. bf16 keeps 8 significant bits, so an
update smaller than half a step between neighbouring bf16 values (0.2-0.4% of
the weight) is rounded away: an AdamW step moves a weight by about the
learning rate, and at 1e-6 (DPO's default) nearly every update is lost. Such
runs want "fp32".

Pure module (no Django): torch only, and only for dtypes.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import torch

from rewardmodel.lib.config import WEIGHTS_SETTINGS

__all__ = ["WEIGHTS_SETTINGS", "dtype_name", "resolve_weights_dtype", "stored_dtype", "weights_dtype"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: the spelling of config.json and meta.json."""
    return str(dtype).removeprefix("torch.")


def stored_dtype(folder: str | Path) -> torch.dtype:
    """The floating dtype a model folder's weights are stored in.

    config.json's ``dtype`` (transformers 5) or ``torch_dtype`` when it names
    fp32, bf16 or fp16; else the dtype most floating tensors of its
    ``*.safetensors`` files have (read from their headers, no weights loaded);
    else fp32.
    """
    path = Path(folder)
    config_file = path / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for source in (config, config.get("text_config") or {}):
            named = source.get("dtype") or source.get("torch_dtype")
            if isinstance(named, str) and named.removeprefix("torch.") in _DTYPES:
                return _DTYPES[named.removeprefix("torch.")]
    counts: Counter[str] = Counter()
    for file in sorted(path.glob("*.safetensors")):
        counts.update(_safetensors_float_dtypes(file))
    return _DTYPES[counts.most_common(1)[0][0]] if counts else torch.float32


def _safetensors_float_dtypes(file: Path) -> list[str]:
    """The floating dtype ("bfloat16", ...) of every fp32/bf16/fp16 tensor named in a safetensors header."""
    with file.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return [_SAFETENSORS_DTYPES[entry["dtype"]] for name, entry in header.items()
            if name != "__metadata__" and entry.get("dtype") in _SAFETENSORS_DTYPES]


def weights_dtype(setting: str, *, device_type: str, bf16_supported: bool, stored: torch.dtype) -> torch.dtype:
    """The dtype weights load and train in (see the module docstring); fp32 means fp32 master weights.

    `bf16_supported`: the CUDA device has bf16 (``torch.cuda.is_bf16_supported()``);
    ignored elsewhere. Raises ValueError for an unknown setting, and for
    "checkpoint" with low-precision weights on a CUDA GPU without bf16.
    """
    if setting not in WEIGHTS_SETTINGS:
        raise ValueError(f"unknown weights setting {setting!r} (expected one of {WEIGHTS_SETTINGS})")
    low_precision = stored in (torch.bfloat16, torch.float16)
    if setting == "fp32" or not low_precision:
        return torch.float32
    gpu_with_bf16 = device_type == "cuda" and bf16_supported
    if setting == "auto" and not gpu_with_bf16:
        return torch.float32
    if device_type == "cuda" and not bf16_supported:
        raise ValueError("weights='checkpoint' on a GPU without bf16: use 'fp32'")
    return torch.bfloat16


def resolve_weights_dtype(setting: str, device: torch.device, stored: torch.dtype) -> torch.dtype:
    """`weights_dtype` for a run on `device` (asks CUDA for bf16 support only on a CUDA device)."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return weights_dtype(setting, device_type=device.type, bf16_supported=bf16, stored=stored)
