"""A reward model as a transformers sequence-classification checkpoint.

`save_reward_model` writes the backbone and the K heads as one
`AutoModelForSequenceClassification` folder (``num_labels`` = K) whenever
transformers' own head computes the same numbers as `RewardModel`:

* a causal LM with "last" pooling whose ``*ForSequenceClassification`` has a
  bias-free linear ``score`` (Llama, Mistral, Qwen2/3 and the other models on
  transformers' generic head). That head reads the rightmost token that is not
  ``config.pad_token_id``, so the folder's pad token must never be the final
  token of a formatted text: `classifier_pad_id` picks one, and the saved
  tokenizer pads with it too;
* a BERT-style encoder with "cls" pooling and a pretrained pooler, whose
  ``classifier`` is one linear layer (its bias is saved as zeros: a bias
  cancels in r_c - r_r and the project never trains one).

``logits[:, k]`` is then head k's reward; the project's reward is the mean over
heads (``logits.mean(-1)``, the only logit when K = 1). Anything else ("mean"
pooling, an encoder without a pooler, a head with extra layers) keeps the old
layout: the backbone's `save_pretrained` files plus ``reward_head.safetensors``.

Pure module: torch and transformers, no Django.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

#: Attribute names of transformers' single-linear classification heads.
HEAD_NAMES = ("score", "classifier")


def classifier_pad_id(model: Any) -> int | None:
    """A token id for ``config.pad_token_id`` such that transformers pools the token `RewardModel` pools.

    The tokenizer's pad token when no formatted text ends with it, else its unk or bos token.
    None when every candidate can end a text (then the folder keeps the old layout).
    """
    tok = model.tokenizer
    ends = {seq[-1] for seq in model.formatter.encode_for_scoring(["hello"], ["world"], model.max_length) if seq}
    tail = getattr(model.formatter, "tail", None) if model.formatter.kind == "plain" else None
    if tail:
        ends.add(tail[-1])
    for candidate in (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id):
        if candidate is not None and int(candidate) not in ends:
            return int(candidate)
    return None


def sequence_classifier(model: Any) -> tuple[nn.Module | None, str]:
    """(an ``*ForSequenceClassification`` sharing `model`'s backbone and holding its heads, "") or (None, why not).

    The wrapper's config has ``num_labels`` = K and the pad token of `classifier_pad_id`; its head
    weight is `model.head`'s (fp32), so ``save_pretrained`` on it writes a folder whose logits are the
    per-head rewards. Built on the meta device first: nothing of the backbone is copied.
    """
    from transformers import AutoModelForSequenceClassification

    backbone = model.backbone
    if model.pooling not in ("last", "cls") or model.pooling != ("last" if model.causal else "cls"):
        return None, f"{model.pooling!r} pooling has no transformers head"
    if not model.causal and not hasattr(getattr(backbone, "pooler", None), "dense"):
        return None, "an encoder without a pretrained pooler has no transformers head"
    pad_id = classifier_pad_id(model) if model.causal else model.pad_id
    if pad_id is None:
        return None, "every pad token candidate can end a formatted text"
    config = copy.deepcopy(backbone.config)
    config.num_labels = model.ensemble_size
    config.id2label = {i: f"reward_{i}" for i in range(model.ensemble_size)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.pad_token_id = pad_id
    try:
        with torch.device("meta"):
            wrapper = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError) as error:  # no sequence-classification class for this model type
        return None, str(error)
    head_name = next((n for n in HEAD_NAMES if isinstance(getattr(wrapper, n, None), nn.Linear)), None)
    if head_name is None or not hasattr(wrapper, wrapper.base_model_prefix):
        return None, f"{type(wrapper).__name__} has no single linear head"
    setattr(wrapper, wrapper.base_model_prefix, backbone)
    old = getattr(wrapper, head_name)
    head = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
    with torch.no_grad():
        head.weight.copy_(model.head.weight.detach().float().cpu())
        if head.bias is not None:
            head.bias.zero_()
    setattr(wrapper, head_name, head.to(model.head.weight.device))
    if any(t.is_meta for t in [*wrapper.parameters(), *wrapper.buffers()]):
        return None, f"{type(wrapper).__name__} has layers beyond the backbone and one linear head"
    wrapper.config.dtype = model.saved_dtype
    return wrapper, ""


def head_key(folder: Path) -> str | None:
    """The safetensors name of the head in a sequence-classification folder ("score.weight"), else None."""
    names = _tensor_files(folder)
    for name in HEAD_NAMES:
        if f"{name}.weight" in names:
            return f"{name}.weight"
    return None


def read_tensor(folder: Path, key: str) -> torch.Tensor:
    """One tensor of a (possibly sharded) safetensors checkpoint, as stored."""
    with safe_open(str(folder / _tensor_files(folder)[key]), framework="pt") as handle:
        return handle.get_tensor(key)


def _tensor_files(folder: Path) -> dict[str, str]:
    """Tensor name -> the safetensors file (relative) holding it."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    single = folder / "model.safetensors"
    if not single.is_file():
        return {}
    with safe_open(str(single), framework="pt") as handle:
        return {key: single.name for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)


#: meta.json keys `save_reward_model` writes itself; the rest (config, lineage, metrics) carries over.
_LAYOUT_KEYS = ("format", "layout", "architecture", "not_sequence_classification", "tie_param")


def resave_reward_model(source: Path, out: Path) -> Path:
    """Save the reward model in `source` (either layout) into `out` in today's layout, with its card;
    meta.json keeps the lineage, config and metrics it had. Returns the new meta.json's path."""
    from rewardmodel.lib.model import META_FILE, load_reward_model, save_reward_model

    model = load_reward_model(source)
    meta = {k: v for k, v in json.loads((Path(source) / META_FILE).read_text()).items() if k not in _LAYOUT_KEYS}
    model.mode = str(meta.pop("mode", model.mode))
    return save_reward_model(model, out, meta)
