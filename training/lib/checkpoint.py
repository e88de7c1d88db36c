"""Policy weights in and out: loading a policy to train, and checkpoints that appear atomically.

`load_policy` loads a causal LM (an alias, local folder or hub id) in the
dtype the run trains in (fp32 unless asked; see `rewardmodel.lib.precision`)
with dropout off, optionally wrapped in fresh LoRA adapters.

A checkpoint is a folder that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load (or, for an unmerged LoRA run, a peft
adapter folder over a recorded base), plus ``meta.json`` and a model card
``README.md`` (`rewardmodel.lib.cards.checkpoint_card`). An adapter's
``adapter_config.json`` names its base by a portable id (a hub id where one is
known; ``base_model_id`` in meta.json), while meta.json's ``base_model_path``
keeps the local folder this host loads it over. Its ``meta.json``:

    {"format": "training.lib.checkpoint/1", "weights": "full" | "merged" | "adapter",
     "dtype": "bfloat16" | "float32" | ..., "base_model": ..., "base_model_path": ...,
     "code_version": ..., "created_at": ...,
     ...whatever the caller adds (kind, config, lineage, metrics)}

`save_checkpoint` writes the weights in the dtype it is given (the base
model's own, so a bf16 original gives a bf16 checkpoint whose config.json says
so) into a hidden temporary sibling folder, flushes it to disk, lets the caller
verify it by loading it back, and only then renames it onto `out_dir`: a reader sees no folder or a complete,
verified one, never a half-written one. On any failure the temporary folder
is removed and the error propagates.

Pure module (no Django): torch and transformers; peft only where LoRA needs it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardmodel.lib.backbones import resolve_model
from rewardmodel.lib.cards import checkpoint_card, portable_model_id
from rewardmodel.lib.model import code_version
from rewardmodel.lib.precision import dtype_name
from training.lib.logprobs import ScoredTokens, sequence_sums, token_logprobs
from training.lib.modes import is_quantized, merged_over_full_precision_base, quantized_load_options

__all__ = [
    "CHECKPOINT_FORMAT",
    "META_FILE",
    "ensure_free",
    "floating_dtype",
    "load_checkpoint",
    "load_policy",
    "probe_verifier",
    "save_checkpoint",
]

META_FILE = "meta.json"
CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_FORMAT = "training.lib.checkpoint/1"


def load_policy(
    name_or_path: str,
    device: torch.device | str = "cpu",
    *,
    lora: Mapping[str, Any] | None = None,
    gradient_checkpointing: bool = False,
    dtype: torch.dtype = torch.float32,
    quantize: bool = False,
) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved local path) of a policy to train.

    Weights in `dtype` (fp32: mixed precision, if any, is the caller's
    autocast; see `rewardmodel.lib.precision`), sdpa attention, every dropout off (it makes πθ noisy against a deterministic
    reference; TRL does the same). `lora`: keyword arguments of peft's
    `LoraConfig` (r, lora_alpha, lora_dropout, target_modules, ...); the
    adapters are added after dropout is turned off, so their own dropout stays;
    over a bf16 base they are fp32 (peft's default).

    `quantize` (QLoRA; needs `lora`): the base loads in 4-bit NF4 on the CUDA `device`
    (`training.lib.modes.quantized_load_options`; `dtype` is then unused) and goes through peft's
    `prepare_model_for_kbit_training`. Raises ValueError off CUDA or without bitsandbytes,
    before loading anything.
    """
    if quantize and lora is None:
        raise ValueError("a 4-bit base trains only through adapters: quantize needs lora")
    loading = quantized_load_options(device) if quantize else {"dtype": dtype}
    path = _resolve(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **loading)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    checkpointing = {"use_reentrant": False}
    if quantize:
        from peft import prepare_model_for_kbit_training

        # Freezes the 4-bit base, keeps norms and embeddings in fp32, and turns on checkpointing if asked.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    if lora is not None:
        from peft import LoraConfig, get_peft_model  # LoRA runs only: peft takes seconds to import

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    return (model if quantize else model.to(device)), tokenizer, path


def ensure_free(out_dir: str | Path) -> Path:
    """Raise FileExistsError unless `out_dir` is absent or an empty folder (checked before a long run)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; checkpoints are never overwritten")
    return out


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    meta: Mapping[str, Any],
    *,
    merge_lora: bool = True,
    dtype: torch.dtype | None = None,
    verify: Callable[[Path, Any], None] | None = None,
) -> Path:
    """Save `model` (+ tokenizer + meta.json) to `out_dir` atomically; returns `out_dir`.

    A peft model is merged into its base first (``weights = "merged"``; the
    in-memory model is merged too; a QLoRA model's adapters are merged into its
    base reloaded on the CPU in `dtype` instead, see
    `training.lib.modes.merged_over_full_precision_base`, and that model is what
    is saved and verified) unless ``merge_lora=False``, which saves
    only the adapter (``weights = "adapter"``; `meta` must then name the base
    in ``base_model_path`` or ``base_model``). `dtype` (the base model's own,
    see `precision.stored_dtype`): the floating parameters are cast to it in
    memory before saving (None: saved as they are); meta.json's ``dtype`` names
    it. `verify(tmp_dir, saved_model)` runs on the finished temporary folder
    with the model as written (merged, cast) and must raise if the folder does
    not reproduce it (skipped for an adapter trained over a 4-bit base, which
    loads over the base in its own dtype; meta.json then says
    ``"adapter_trained_over": "nf4"``). Raises FileExistsError if `out_dir` exists and is not empty.
    """
    out = ensure_free(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    weights = "full"
    if _is_peft(model):
        if merge_lora and is_quantized(model):
            model = merged_over_full_precision_base(model, dtype or floating_dtype(model.get_base_model()))
            weights = "merged"
        elif merge_lora:
            model, weights = model.merge_and_unload(), "merged"
        else:
            weights = "adapter"
            if not (meta.get("base_model_path") or meta.get("base_model")):
                raise ValueError("an adapter checkpoint needs base_model_path or base_model in meta")
            if is_quantized(model):
                # Loaders put the adapter over the base in its own dtype, which the 4-bit base the
                # adapter trained over only approximates: no exact round trip to verify.
                meta, verify = {**meta, "adapter_trained_over": "nf4"}, None
    if dtype is not None:
        _cast_parameters(model, dtype)
    full_meta = {
        "format": CHECKPOINT_FORMAT,
        "weights": weights,
        "dtype": dtype_name(dtype or floating_dtype(model)),
        "code_version": code_version(),
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **meta,
    }
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if weights == "adapter":
            full_meta = _portable_adapter_base(tmp, full_meta)
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
        (tmp / CARD_FILE).write_text(checkpoint_card(full_meta), encoding="utf-8")  # replaces peft's template card
        _fsync_tree(tmp)
        if verify is not None:
            verify(tmp, model)
        if out.exists():
            out.rmdir()  # an empty placeholder (checked above); rename cannot replace a folder otherwise
        os.rename(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _portable_adapter_base(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Point adapter_config.json's base model at a portable id (a hub id, never this host's path);
    returns `meta` with the local path kept in ``base_model_path``, which `load_checkpoint` reads."""
    config_file = folder / ADAPTER_CONFIG
    config = json.loads(config_file.read_text(encoding="utf-8"))
    local = config.get("base_model_name_or_path")
    portable = portable_model_id(meta.get("base_model") or local)
    if portable:
        config["base_model_name_or_path"] = portable
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return {**meta, "base_model_path": meta.get("base_model_path") or local, "base_model_id": portable}


def floating_dtype(model: Any) -> torch.dtype:
    """The dtype of a model's first floating parameter (its weights' dtype; LoRA adapters come later)."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _cast_parameters(model: Any, dtype: torch.dtype) -> None:
    """Cast every floating parameter to `dtype` in place.

    Parameters only: buffers keep their dtype, as `from_pretrained` makes them
    (a bf16 copy of Llama's fp32 rotary frequencies would change every logit).
    """
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _fsync_tree(folder: Path) -> None:
    """Flush every file, then the folder, so a rename never publishes data still in page cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    return json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, meta) of a checkpoint folder, merged or adapter, in `dtype`.

    An adapter's weights load in `dtype` too (over a base in `dtype`), so a
    bf16 adapter checkpoint loaded in bf16 computes as it did when saved.
    """
    folder = Path(path)
    meta = read_meta(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if meta.get("weights") == "adapter":
        from peft import PeftModel  # adapter checkpoints only: peft takes seconds to import

        base_path = meta.get("base_model_path")
        if not (base_path and os.path.isdir(base_path)):  # trained on another host: the base by its name
            base_path = _resolve(meta.get("base_model") or meta["base_model_id"])
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, attn_implementation="sdpa")
        model = PeftModel.from_pretrained(base, folder, autocast_adapter_dtype=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval(), tokenizer, meta


def _resolve(name: str) -> str:
    return name if os.path.isdir(name) else resolve_model(name)


def probe_verifier(probe: ScoredTokens, *, atol: float = 1e-3) -> Callable[[Path, Any], None]:
    """A `verify` for `save_checkpoint`: the reloaded folder must give the saved model's sequence log-probs of `probe`.

    Both run without autocast on the saved model's device and in its dtype
    (the same kernels on the same weights). Raises AssertionError on a mismatch.
    """

    def verify(folder: Path, saved: Any) -> None:
        device = next(saved.parameters()).device
        batch = probe.to(device)
        was_training = saved.training
        saved.eval()
        reloaded, _, _ = load_checkpoint(folder, device=device, dtype=floating_dtype(saved))
        with torch.no_grad():
            expected = sequence_sums(token_logprobs(saved, batch), batch.seq_index, batch.num_seqs).float().cpu()
            got = sequence_sums(token_logprobs(reloaded, batch), batch.seq_index, batch.num_seqs).float().cpu()
        saved.train(was_training)
        del reloaded
        worst = float((got - expected).abs().max())
        if not worst <= atol * max(1.0, float(expected.abs().max()) / 100):
            raise AssertionError(f"checkpoint {folder} does not reproduce the trained model: max |Δ logp| = {worst}")

    return verify
