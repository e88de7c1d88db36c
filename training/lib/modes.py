"""What a run trains: every weight, LoRA adapters, or adapters over a 4-bit base (QLoRA).

Every run config (`RewardConfig`, `DPOConfig`, `PPOConfig`) has ``mode``:

* ``"full"``: every weight trains (in the dtype ``weights`` picks; `rewardmodel.lib.precision`);
* ``"lora"``: the base is frozen and LoRA adapters train on its linear layers (a reward model's
  heads train fully);
* ``"qlora"``: the same over a base quantised to 4-bit NF4 by bitsandbytes (double-quantised
  scales, bf16 compute; embeddings, norms and heads stay unquantised). CUDA only, and only where
  bitsandbytes is installed (it is not in requirements.txt: its wheel carries CUDA kernels the CPU
  deployments never use); elsewhere `resolve_run_mode` refuses it with a ValueError before
  anything loads;
* ``"auto"``, the default, picks one of them when the run starts:

  - off CUDA (the CPU demo and the tests): ``"full"``, the behaviour before the setting existed;
  - on a CUDA GPU: the first of full, LoRA, QLoRA whose `training.lib.memory.estimate` fits the
    GPU's free memory (``torch.cuda.mem_get_info``). The estimate reads the model's config.json
    sizes and the run's micro-batch, max length, gradient checkpointing and LoRA rank; full
    fine-tuning is costed in the precision the run's ``weights`` picks (fp32 master weights by
    default, so a 7-8B policy falls to LoRA on an 80 GB GPU). QLoRA is a candidate only where
    bitsandbytes is installed. When none fits, the most frugal candidate (QLoRA, else LoRA): a
    smaller batch may still fit it. A model whose config.json lacks the sizes the accounting reads
    (hidden size, layers, heads, intermediate size, vocabulary) trains in full. The accounting is
    a decoder-only LM's; an encoder backbone (BERT) is costed as if it were one, which is close
    for a reward model (no vocabulary logits either way).

  On several GPUs (``ranks`` > 1, under torchrun) each process is costed for its share of a
  micro-batch, and full fine-tuning for its 1/N shard where the run's ``parallel`` setting shards it
  (``auto`` or ``shard``: `training.lib.sharding.resolve_parallel`), so a model too big for one GPU
  trains in full over several. On several GPUs, ``parallel: shard`` makes "auto" mean full
  fine-tuning (only it shards: the configs refuse ``shard`` with adapters), refused at once with
  the memory it needs when that does not fit; on one GPU ``parallel`` changes nothing. Each process measures its own GPU and `training.lib.distributed.agreed_mode` makes
  every rank take the leanest choice any of them made.

A QLoRA run's checkpoint is saved in the base model's own dtype: its adapters are merged into the
base reloaded on the CPU in that dtype (`merged_over_full_precision_base`), never into the 4-bit
weights (that would re-quantise the result). Saving needs the CPU memory of the base in its own
dtype; DPO's ``lora_merge=False`` saves the adapter alone where that is too much.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, TypeVar

import torch

from rewardmodel.lib.backbones import resolve_model
from rewardmodel.lib.precision import resolve_weights_dtype, stored_dtype
from training.lib.memory import GIB, Shape, Workload, estimate

__all__ = [
    "is_quantized",
    "merged_over_full_precision_base",
    "qlora_unavailable",
    "quantized_load_options",
    "resolve_mode",
    "resolve_run_mode",
]

Config = TypeVar("Config")


def qlora_unavailable(device: torch.device) -> str | None:
    """Why QLoRA cannot run on `device` (a sentence), or None when it can.

    Checks the device and that bitsandbytes is importable, without importing it.
    """
    if device.type != "cuda":
        return (f"mode='qlora' needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on {device.type}; "
                "use mode='lora' (or 'auto')")
    if importlib.util.find_spec("bitsandbytes") is None:
        return "mode='qlora' needs bitsandbytes, which is not installed: pip install bitsandbytes (or use mode='lora')"
    return None


def resolve_mode(setting: str, *, kind: str, model_path: str, device: torch.device, full_dtype: torch.dtype,
                 work: Workload, budget_bytes: float | None = None, only_full: bool = False) -> str:
    """The mode a run of `kind` trains in: "full", "lora" or "qlora" (see the module docstring for "auto").

    `full_dtype`: the dtype full fine-tuning would train the weights in; `work`: one process's
    micro-batch and, on several, whether full fine-tuning is sharded; `budget_bytes`: the device
    memory to fit (None: the CUDA device's free memory); `only_full`: "auto" may only mean full
    (a run on several GPUs that asked to shard): a ValueError says so when it will not fit. Raises
    ValueError for "qlora" where it cannot run.
    """
    if setting == "qlora":
        reason = qlora_unavailable(device)
        if reason is not None:
            raise ValueError(reason)
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "full"
    shape = _shape(model_path)
    if shape is None:
        return "full"
    if budget_bytes is None:
        budget_bytes = float(torch.cuda.mem_get_info(device)[0])
    full = "full-fp32" if full_dtype == torch.float32 else "full-bf16"
    if only_full:
        need = estimate(kind, full, shape, work)
        if not need.fits(budget_bytes):
            raise ValueError(
                f"parallel='shard' asks for full fine-tuning, which needs about {need.total / GIB:.0f} GiB per GPU "
                f"on {work.ranks} GPUs for this model and batch ({budget_bytes / GIB:.0f} GiB free): use more GPUs "
                "or a smaller batch, or mode='lora' (or 'qlora') with parallel='replicate' or 'auto'")
        return "full"
    candidates = [(full, "full"), ("lora", "lora")]
    if qlora_unavailable(device) is None:
        candidates.append(("qlora", "qlora"))
    for accounted, mode in candidates:
        if estimate(kind, accounted, shape, work).fits(budget_bytes):
            return mode
    return candidates[-1][1]


def resolve_run_mode(config: Config, *, kind: str, device: torch.device, ranks: int = 1) -> Config:
    """`config` with its ``mode`` resolved for a run of `kind` ("reward_model", "dpo", "ppo") on `device`,
    one of `ranks` processes.

    The LoRA fields follow through the configs' own checks (DPO's ``lora``, PPO's ``lora_r``).
    Raises ValueError for "qlora" where it cannot run (before any weights load).
    """
    mode = config.mode  # type: ignore[attr-defined]
    path = _local_path(config.backbone if kind == "reward_model" else config.model)  # type: ignore[attr-defined]
    if mode == "auto" and device.type == "cuda":
        full_dtype = resolve_weights_dtype(config.weights, device, stored_dtype(path))  # type: ignore[attr-defined]
    else:
        full_dtype = torch.float32  # unused: nothing is estimated
    parallel = getattr(config, "parallel", "replicate")
    work = dataclasses.replace(_workload(config, kind), ranks=ranks, sharded=ranks > 1 and parallel != "replicate")
    chosen = resolve_mode(mode, kind=kind, model_path=path, device=device, full_dtype=full_dtype, work=work,
                          only_full=ranks > 1 and parallel == "shard")  # the configs refuse to shard adapters
    if chosen == mode:
        return config
    if parallel == "shard" and chosen != "full":  # one process: nothing to shard, whatever it asked
        return dataclasses.replace(config, mode=chosen, parallel="replicate")  # type: ignore[type-var]
    return dataclasses.replace(config, mode=chosen)  # type: ignore[type-var]


def _local_path(name: str) -> str:
    return name if Path(name).is_dir() else resolve_model(name)


def _shape(model_path: str) -> Shape | None:
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    try:
        return Shape.from_config(config.get("text_config") or config, name=Path(model_path).name)
    except ValueError:
        return None


def _workload(config: Any, kind: str) -> Workload:
    """The micro-batch the memory accounting costs for `config`."""
    rank = getattr(config, "lora_r", 0) or Workload.lora_rank
    if kind == "ppo":  # a step samples `batch_size` rollouts together (their KV cache) and updates on them
        reward_path = config.reward if config.reward and Path(config.reward).is_dir() else ""
        return Workload(batch=config.batch_size, new_tokens=config.max_new_tokens,
                        gradient_checkpointing=config.gradient_checkpointing, lora_rank=rank,
                        reward_shape=_shape(reward_path) if reward_path else None)
    return Workload(batch=config.batch_size, length=config.max_length,
                    gradient_checkpointing=config.gradient_checkpointing, lora_rank=rank)


def quantized_load_options(device: torch.device | str) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a 4-bit NF4 base on the CUDA `device` (QLoRA's recipe)."""
    from transformers import BitsAndBytesConfig

    device = torch.device(device)
    reason = qlora_unavailable(device)
    if reason is not None:
        raise ValueError(reason)
    index = device.index if device.index is not None else torch.cuda.current_device()
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    # A quantised model is placed where it loads (bitsandbytes quantises on the way to the GPU).
    return {"quantization_config": quantization, "dtype": torch.bfloat16, "device_map": {"": index}}


def is_quantized(model: Any) -> bool:
    """True for a model (or a peft model over one) whose base is loaded in 4 or 8 bits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def merged_over_full_precision_base(model: Any, dtype: torch.dtype) -> Any:
    """A peft `model`'s active adapters merged into its base reloaded on the CPU in `dtype`; returns the plain model.

    For QLoRA: merging into the 4-bit weights would quantise the merged weights again, so the
    base is read anew from the folder it came from (peft records it) in `dtype`, the trained
    adapter weights are copied over, and the merge happens there. The base's class is kept
    (a causal LM for a policy, the bare backbone for a reward model).
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    adapter = model.active_adapter
    lora_config = dataclasses.replace(model.peft_config[adapter])
    base_class = type(model.get_base_model())
    base = base_class.from_pretrained(lora_config.base_model_name_or_path, dtype=dtype, attn_implementation="sdpa")
    fresh = get_peft_model(base, lora_config)
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(model, adapter_name=adapter))
    return fresh.merge_and_unload()
