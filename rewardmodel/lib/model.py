"""A scalar reward model over any Hugging Face backbone.

`RewardModel` = base model (`AutoModel`, no LM head) + K linear scalar heads
(K = 1, or an ensemble sharing one backbone). A sequence's hidden summary is

* "last" (default for causal LMs): the hidden state of its final real token,
  the token `AutoModelForSequenceClassification` reads when the pad token is
  not the final token, so with K = 1 and the same weights it reproduces
  TRL's rewards exactly;
* "cls" (default for encoders): the first token's state, passed through the
  backbone's own pretrained pooler (dense + tanh) when it has one, exactly
  as `BertForSequenceClassification` does. On all-MiniLM-L6-v2 this learned
  preferences much faster than a mean over tokens, which shrinks the
  chosen/rejected difference;
* "mean": the mean over real tokens (as sentence-transformers pool).

The backbone's weights are fp32 or the stored dtype of its checkpoint (bf16;
see `rewardmodel.lib.precision`); the heads stay fp32 and read the pooled state
in fp32.

A saved model is a folder: an ``*ForSequenceClassification`` checkpoint whose
K logits are the heads' rewards (backbone in the backbone checkpoint's own dtype,
heads fp32; see `rewardmodel.lib.hf_layout`), the tokenizer, `meta.json`
(config, lineage, metrics, ``dtype``, the learned tie parameter) and a model
card `README.md`. Where transformers has no head that computes our rewards, and
in folders saved before, the backbone's own files plus `reward_head.safetensors`
(head weight [K, H], learned tie parameter, fp32) take the checkpoint's place.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from rewardmodel.lib.backbones import resolve_model
from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.data import PairBatch, PairFormatter
from rewardmodel.lib.precision import dtype_name, resolve_weights_dtype, stored_dtype

HEAD_FILE = "reward_head.safetensors"  # the old layout's heads (and still where no transformers head fits)
META_FILE = "meta.json"
CARD_FILE = "README.md"
#: Architectures whose attention accepts a custom 4D mask plus position ids
#: through transformers' shared masking path (only llama is under test).
PREFIX_SHARING_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
#: Architectures that take packed rows: the above plus BERT (0-based absolute
#: positions; RoBERTa-style offset positions would need their own ids).
PACKING_TYPES = PREFIX_SHARING_TYPES | {"bert"}
#: The attention implementation a RewardModel gives the backbones above: transformers'
#: sdpa, plus the flat-token layout of `_flat_sdpa` when a call passes `token_index`.
FLAT_ATTENTION = "rewardmodel_flat_sdpa"
SDPA_NAMES = ("sdpa", FLAT_ATTENTION)


def is_encoder_config(config: Any) -> bool:
    """True for bidirectional encoders (BERT family); causal LMs and the rest are False."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def resolve_backbone(name_or_path: str) -> str:
    """A local folder stays as is; aliases and hub ids go through `backbones.resolve_model`."""
    if os.path.isdir(name_or_path):
        return name_or_path
    return resolve_model(name_or_path)


class RewardModel(nn.Module):
    """Backbone + K scalar heads. `forward` returns rewards [S, K] for S sequences.

    `tokenizer`, `formatter` and `max_length` travel with the model so that
    `score()` formats text exactly as training did.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        pooling: str = "auto",
        ensemble_size: int = 1,
        max_length: int = 512,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.causal = not is_encoder_config(backbone.config)
        self.pooling = ("last" if self.causal else "cls") if pooling == "auto" else pooling
        self.max_length = max_length
        self.formatter = PairFormatter(tokenizer, causal=self.causal)
        text_config = backbone.config.get_text_config()
        self.head = nn.Linear(text_config.hidden_size, ensemble_size, bias=False)  # a bias cancels in r_c - r_r
        nn.init.normal_(self.head.weight, std=getattr(text_config, "initializer_range", 0.02))
        # Learned tie parameter of Davidson / Rao–Kupper; unused (and untrained) for plain BT.
        self.tie_param = nn.Parameter(torch.zeros(()))
        self.meta: dict[str, Any] = {}  # lineage of a loaded model (meta.json)
        self.mode = "full"  # what trains: "full", "lora" or "qlora" (set by `build_reward_model`)
        # The dtype `save_reward_model` writes the backbone in: its checkpoint's own (set by the loaders).
        self.saved_dtype: torch.dtype = next(p.dtype for p in backbone.parameters() if p.is_floating_point())
        # With [CLS] pooling only one position of the final layer is used; for
        # BERT-layout encoders we run that layer for those positions alone
        # (keys/values still for all tokens): on all-MiniLM-L6-v2 that is ~14%
        # of the work. Exact up to float rounding; off switch for comparisons.
        self.final_layer_shortcut = self.pooling == "cls" and _bert_final_layer(backbone) is not None
        # Backbones that take packed rows run their per-token layers (projections, MLP, norms,
        # rotary or position embeddings) on the real tokens of a packed batch alone, laid out
        # flat; only attention sees the padded rows the block mask describes. Exact up to float
        # rounding; off switch for comparisons.
        self.flat_tokens = _use_flat_attention(backbone)

    @property
    def ensemble_size(self) -> int:
        return self.head.out_features

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def supports_prefix_sharing(self) -> bool:
        return (
            self.causal
            and self.pooling == "last"
            and self.backbone.config.model_type in PREFIX_SHARING_TYPES
            and self.backbone.config._attn_implementation in SDPA_NAMES
        )

    def supports_packing(self) -> bool:
        return self.backbone.config.model_type in PACKING_TYPES and self.backbone.config._attn_implementation in SDPA_NAMES

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None,
        first_index: torch.Tensor | None = None,
        owner: torch.Tensor | None = None,
        token_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rewards [S, K] for S sequences.

        input_ids [N, T]; attention_mask [N, T] (1 = real, one sequence per
        row, S = N) or [N, 1, T, T] bool (packed or shared-prefix rows, see
        `PairBatch`). last_index / first_index [S]: flat indices into N*T of
        each sequence's last / first token ("last" needs last_index; "cls"
        defaults to column 0). owner [N, T]: output index per token for
        "mean" pooling (defaults to the row of a 2D attention_mask). token_index
        [M]: ascending flat indices of the real tokens (see `flat_tokens`).
        """
        if self.flat_tokens and token_index is not None and attention_mask.dim() == 4 and position_ids is not None:
            return self._forward_flat(input_ids, attention_mask, position_ids, token_index, last_index,
                                      first_index, owner)
        extra: dict[str, Any] = {"use_cache": False} if self.causal else {}
        if position_ids is not None:
            extra["position_ids"] = position_ids
        if self.pooling == "cls" and self.final_layer_shortcut:
            n_rows, width = input_ids.shape
            index = _row_starts(first_index, n_rows, width, input_ids.device)
            with _without_final_layer(self.backbone) as final_layer:
                hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            return self._score(self._pooler(_final_layer_at(final_layer, hidden, attention_mask, index)))
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])  # [N*T, H]
        if self.pooling == "last":
            if last_index is None:
                raise ValueError("last-token pooling needs last_index")
            pooled = flat[last_index]
        elif self.pooling == "cls":
            pooled = self._pooler(flat[first_index] if first_index is not None else hidden[:, 0])
        else:
            pooled = _mean_by_owner(flat, owner if owner is not None else _row_owner(attention_mask))
        return self._score(pooled)

    def _forward_flat(self, input_ids, attention_mask, position_ids, token_index, last_index, first_index, owner):
        """`forward` for a block-masked batch with its M real tokens as one flat sequence [1, M]."""
        n_rows, width = input_ids.shape
        shortcut = self.pooling == "cls" and self.final_layer_shortcut
        with _without_final_layer(self.backbone) if shortcut else contextlib.nullcontext() as final_layer:
            hidden = self.backbone(
                input_ids=input_ids.reshape(-1)[token_index][None],
                attention_mask=attention_mask,
                position_ids=position_ids.reshape(-1)[token_index][None],
                use_cache=False,
                token_index=token_index,  # passed through to `_flat_sdpa` in every layer
                row_shape=(n_rows, width),
            ).last_hidden_state[0]  # [M, H]
        if shortcut:  # the final layer at the [CLS] positions alone, reading keys and values from the rows
            firsts = _row_starts(first_index, n_rows, width, hidden.device)
            rows = hidden.new_zeros(n_rows * width, hidden.shape[-1]).index_copy(0, token_index, hidden)
            cls = _final_layer_at(final_layer, rows.view(n_rows, width, -1), attention_mask, firsts)
            return self._score(self._pooler(cls))
        if self.pooling == "last":
            if last_index is None:
                raise ValueError("last-token pooling needs last_index")
            return self._score(hidden[torch.searchsorted(token_index, last_index)])
        if self.pooling == "cls":
            firsts = _row_starts(first_index, n_rows, width, hidden.device)
            return self._score(self._pooler(hidden[torch.searchsorted(token_index, firsts)]))
        flat_owner = (owner if owner is not None else _row_owner(attention_mask)).reshape(-1)[token_index]
        return self._score(_mean_by_owner(hidden, flat_owner))

    def _score(self, pooled: torch.Tensor) -> torch.Tensor:
        """The heads on pooled states [S, H] -> [S, K]: bf16 states of a bf16 backbone are read in fp32.

        Under autocast the states pass as they are (autocast runs the head in its dtype either way).
        """
        if pooled.dtype != self.head.weight.dtype and not torch.is_autocast_enabled(pooled.device.type):
            pooled = pooled.to(self.head.weight.dtype)
        return self.head(pooled)

    def _pooler(self, first: torch.Tensor) -> torch.Tensor:
        """The backbone's BERT-style pooler (dense + tanh) on first-token states [S, H], if it has one.

        Applied by hand because packed rows hold several first tokens, not just column 0.
        """
        pooler = getattr(self.backbone, "pooler", None)
        if hasattr(pooler, "dense") and hasattr(pooler, "activation"):
            return pooler.activation(pooler.dense(first))
        return first

    def pair_rewards(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen [B, K], rejected [B, K]) from one forward pass over the batch."""
        return split_pair_rewards(self, batch)


def split_pair_rewards(forward: Any, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `forward` (a RewardModel or its torch.compile wrapper) on a batch: (chosen [B, K], rejected [B, K])."""
    rewards = forward(
        batch.input_ids,
        batch.attention_mask,
        position_ids=batch.position_ids,
        last_index=batch.last_index,
        first_index=batch.first_index,
        owner=batch.owner,
        token_index=batch.token_index,
    )
    chosen, rejected = rewards.chunk(2, dim=0)
    return chosen, rejected


def _row_starts(first_index: torch.Tensor | None, n_rows: int, width: int, device: torch.device) -> torch.Tensor:
    """Flat indices of the sequences' first tokens: `first_index`, or column 0 of every row."""
    return first_index if first_index is not None else torch.arange(n_rows, device=device) * width


def _use_flat_attention(backbone: nn.Module) -> bool:
    """Give a backbone that takes block masks the `FLAT_ATTENTION` implementation; True if it has it."""
    config = backbone.config
    if config.model_type not in PACKING_TYPES or config._attn_implementation not in SDPA_NAMES:
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FLAT_ATTENTION, _flat_sdpa)
    AttentionMaskInterface.register(FLAT_ATTENTION, sdpa_mask)  # 2D masks (one sequence per row) as sdpa builds them
    config._attn_implementation = FLAT_ATTENTION  # not saved: config.json never carries it
    return True


def _flat_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, *, token_index: torch.Tensor | None = None,
               row_shape: tuple[int, int] | None = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """transformers' sdpa attention; with `token_index`, for a call on M real tokens laid out flat.

    query / key / value [1, heads, M, d] are then scattered into the N x T rows that the 4D block
    mask describes (zeros on padding, which attends only to itself), attended there, and the
    output [N, T, heads, d] is gathered back to [1, M, heads, d]. Everything else in the layer
    (projections, MLP, norms, rotary) runs on M tokens instead of N x T.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if token_index is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    n_rows, width = row_shape

    def to_rows(x: torch.Tensor) -> torch.Tensor:
        heads, dim = x.shape[1], x.shape[3]
        rows = x.new_zeros(n_rows * width, heads, dim).index_copy(0, token_index, x[0].transpose(0, 1))
        return rows.view(n_rows, width, heads, dim).transpose(1, 2)

    kwargs["is_causal"] = False  # the block mask is the whole truth
    out, weights = sdpa_attention_forward(module, to_rows(query), to_rows(key), to_rows(value), attention_mask, **kwargs)
    return out.reshape(n_rows * width, *out.shape[2:]).index_select(0, token_index)[None], weights


def _bert_final_layer(backbone: nn.Module) -> nn.Module | None:
    """The last encoder layer if it has BERT's layout (attention.self/.output, intermediate, output)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) < 2:
        return None
    last = layers[-1]
    attention = getattr(last, "attention", None)
    self_attention = getattr(attention, "self", None)
    needed = [(self_attention, n) for n in ("query", "key", "value", "attention_head_size")]
    needed += [(attention, "output"), (last, "intermediate"), (last, "output")]
    return last if all(hasattr(obj, name) for obj, name in needed) else None


@contextlib.contextmanager
def _without_final_layer(backbone: nn.Module) -> Iterator[nn.Module]:
    """Run the encoder without its last layer for the duration; yields that layer."""
    encoder = backbone.encoder
    layers = encoder.layer
    encoder.layer = layers[:-1]
    try:
        yield layers[-1]
    finally:
        encoder.layer = layers


def _final_layer_at(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A BERT layer's output at flat positions `index` [S] only -> [S, H].

    hidden [N, T, H] is the layer's input; mask is the batch's [N, T] or
    [N, 1, T, T] attention mask. Queries and the feed-forward run for S
    positions, keys and values for all N*T.
    """
    n_rows, width, size = hidden.shape
    rows, cols = index // width, index % width
    attention = layer.attention.self
    head = attention.attention_head_size
    x = hidden.reshape(-1, size)[index]  # [S, H]
    query = attention.query(x).view(len(index), -1, 1, head)  # [S, heads, 1, d]
    key = attention.key(hidden).view(n_rows, width, -1, head).transpose(1, 2)[rows]  # [S, heads, T, d]
    value = attention.value(hidden).view(n_rows, width, -1, head).transpose(1, 2)[rows]
    allowed = mask[rows].bool() if mask.dim() == 2 else mask[rows, 0, cols]  # [S, T]
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None, None, :])
    attended = layer.attention.output(context.reshape(len(index), -1), x)
    return layer.output(layer.intermediate(attended), attended)


def _row_owner(attention_mask: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(attention_mask.shape[0], device=attention_mask.device)[:, None]
    return torch.where(attention_mask.bool(), rows, -1)


def _mean_by_owner(flat: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Mean of token states [N*T, H] per output index in owner [N, T] (-1 skipped) -> [S, H]."""
    owner = owner.reshape(-1)
    keep = owner >= 0
    index = owner[keep]
    n_out = int(index.max()) + 1
    # Summed in fp32 whatever the autocast dtype: index_add_ of bf16 on CUDA adds with
    # 16-bit compare-and-swap atomics, which made a bf16 step of all-MiniLM-L6-v2 8x
    # slower than fp32 on an H100 (every token of a sequence adds into the same row).
    sums = torch.zeros((n_out, flat.shape[-1]), dtype=torch.float32, device=flat.device)
    sums.index_add_(0, index, flat[keep].float())
    counts = torch.bincount(index, minlength=n_out).clamp_min(1).to(torch.float32)
    return sums / counts[:, None]


def build_reward_model(config: RewardConfig, *, device: torch.device | None = None,
                       load_device: torch.device | None = None) -> RewardModel:
    """Load the backbone and tokenizer named by `config` and attach fresh heads (seeded by the caller).

    The backbone's weights are in the dtype `config.weights` picks for `device`
    (the CPU when None), and on `load_device` when given (a sharded run loads on
    the CPU, then moves each shard to `device`), else on `device`; the model saves
    in the backbone's stored dtype. In the
    "lora" and "qlora" modes (`config.mode`, resolved by `training.lib.modes`;
    `model.mode` records the outcome) the backbone is frozen and wrapped in peft
    LoRA adapters on all its linear layers (fp32, no dropout), over a 4-bit NF4
    backbone for "qlora"; the heads train fully either way. Raises ValueError for
    "qlora" off CUDA or without bitsandbytes, before loading anything.
    """
    from transformers import AutoModel, AutoTokenizer

    from training.lib.modes import quantized_load_options, resolve_run_mode

    place = device or torch.device("cpu")
    mode = resolve_run_mode(config, kind="reward_model", device=place).mode
    path = resolve_backbone(config.backbone)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base_dtype = stored_dtype(path)
    dtype = resolve_weights_dtype(config.weights, place, base_dtype)
    loading = quantized_load_options(place) if mode == "qlora" else {"dtype": dtype}
    backbone = AutoModel.from_pretrained(path, attn_implementation="sdpa", **loading)
    model = RewardModel(
        backbone, tokenizer, pooling=config.pooling, ensemble_size=config.ensemble_size, max_length=config.max_length
    )
    model.saved_dtype = base_dtype
    model.mode = mode
    disable_dropout(model)  # as TRL does by default: noise in r_c - r_r only slows BT training
    if mode == "full":
        if config.gradient_checkpointing:
            backbone.gradient_checkpointing_enable()
    else:
        model.backbone = _with_adapters(backbone, config, quantized=mode == "qlora")
    target = load_device or device
    return model.to(target) if target is not None else model


def _with_adapters(backbone: nn.Module, config: RewardConfig, *, quantized: bool) -> nn.Module:
    """The backbone frozen under fresh LoRA adapters on all its linear layers (a peft model)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    checkpointing = {"use_reentrant": False}
    if quantized:  # freezes the 4-bit weights, keeps norms and embeddings in fp32
        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=config.gradient_checkpointing,
                                                   gradient_checkpointing_kwargs=checkpointing)
    elif config.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(backbone, lora)


def merge_adapters(model: RewardModel) -> None:
    """Fold a LoRA backbone's adapters into its weights in place (a no-op for a plain backbone).

    A 4-bit (QLoRA) backbone is replaced by its base reloaded on the CPU in `model.saved_dtype`
    with the adapters merged there (`training.lib.modes.merged_over_full_precision_base`).
    """
    from training.lib.modes import is_quantized, merged_over_full_precision_base

    backbone = model.backbone
    if not (hasattr(backbone, "peft_config") and hasattr(backbone, "merge_and_unload")):
        return
    if is_quantized(backbone):
        merged = merged_over_full_precision_base(backbone, model.saved_dtype)
    else:
        merged = backbone.merge_and_unload()
    merged.config._attn_implementation = backbone.config._attn_implementation
    model.backbone = merged


def disable_dropout(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0


def code_version() -> str:
    """`git describe` of the checkout holding this file, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def save_reward_model(model: RewardModel, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write backbone (in `model.saved_dtype`), heads, tokenizer, meta.json and README.md into `out_dir`;
    returns the meta path.

    Where transformers' head computes the same rewards (`hf_layout.sequence_classifier`), the folder is
    an ``*ForSequenceClassification`` checkpoint (``num_labels`` = ensemble size, the heads in the
    weights file as ``score.weight`` or ``classifier.weight``), which
    ``AutoModelForSequenceClassification.from_pretrained`` loads; meta.json's ``layout`` is
    "sequence_classification". Otherwise the backbone's files plus ``reward_head.safetensors``
    ("reward_head"). LoRA adapters are merged into the backbone first (`merge_adapters`), so the folder
    is the same as a full run's; meta.json's ``mode`` says how it trained. The backbone's floating
    parameters are cast to `model.saved_dtype` in memory first.
    """
    from rewardmodel.lib.cards import reward_model_card
    from rewardmodel.lib.hf_layout import sequence_classifier

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merge_adapters(model)
    for param in model.backbone.parameters():  # parameters only: buffers stay as `from_pretrained` makes them
        if param.is_floating_point() and param.dtype != model.saved_dtype:
            param.data = param.data.to(model.saved_dtype)
    wrapper, why_not = sequence_classifier(model)
    tokenizer = model.tokenizer
    if wrapper is not None:
        wrapper.save_pretrained(out, safe_serialization=True)
        if tokenizer.pad_token_id != wrapper.config.pad_token_id:  # users pad with the token the head skips
            tokenizer = copy.deepcopy(tokenizer)
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(wrapper.config.pad_token_id)
        layout = {"layout": "sequence_classification", "architecture": type(wrapper).__name__}
    else:
        model.backbone.save_pretrained(out, safe_serialization=True)
        save_file({"head.weight": model.head.weight.detach().float().cpu().contiguous(),
                   "tie_param": model.tie_param.detach().float().cpu().reshape(1)}, str(out / HEAD_FILE))
        layout = {"layout": "reward_head", "not_sequence_classification": why_not}
    tokenizer.save_pretrained(out)
    full_meta = {
        "format": "rewardmodel.lib/2",
        **layout,
        "pooling": model.pooling,
        "ensemble_size": model.ensemble_size,
        "max_length": model.max_length,
        "text_format": model.formatter.kind,
        "dtype": dtype_name(model.saved_dtype),
        "mode": model.mode,
        "tie_param": float(model.tie_param.detach().float().cpu()),
        "code_version": code_version(),
        **meta,
    }
    (out / CARD_FILE).write_text(reward_model_card(full_meta), encoding="utf-8")
    meta_path = out / META_FILE
    meta_path.write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str))
    return meta_path


def load_reward_model(path: str | Path, *, device: str | torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> RewardModel:
    """Load a folder written by `save_reward_model`, in eval mode, the backbone in `dtype` (heads fp32).

    Both layouts load: a sequence-classification folder (``rewardmodel.lib/2``) and the older one with
    ``reward_head.safetensors`` (``rewardmodel.lib/1`` and unsupported backbones).
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from rewardmodel.lib.hf_layout import head_key, read_tensor

    folder = Path(path)
    meta = json.loads((folder / META_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    old_layout = (folder / HEAD_FILE).is_file()
    key = None if old_layout else head_key(folder)
    if old_layout:
        backbone = AutoModel.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype)
        tensors = load_file(str(folder / HEAD_FILE))
        head, tie = tensors["head.weight"], tensors["tie_param"]
    elif key is not None:
        wrapper = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype)
        backbone = getattr(wrapper, wrapper.base_model_prefix)
        head = read_tensor(folder, key)  # as saved (fp32), not in the backbone's `dtype`
        tie = torch.tensor(float(meta.get("tie_param", 0.0)))
    else:
        raise ValueError(f"{folder} holds neither {HEAD_FILE} nor a sequence-classification head")
    model = RewardModel(
        backbone,
        tokenizer,
        pooling=meta["pooling"],
        ensemble_size=int(meta["ensemble_size"]),
        max_length=int(meta["max_length"]),
    )
    with torch.no_grad():
        model.head.weight.copy_(head.float())
        model.tie_param.copy_(tie.float().reshape(()))
    model.meta = meta
    model.saved_dtype = stored_dtype(folder)
    model.eval()
    return model.to(device) if device is not None else model
