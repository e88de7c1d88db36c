"""Log-probabilities of chosen tokens under a causal LM, shared by DPO and PPO.

The unit of work is a `ScoredTokens` batch: rows of token ids to run through
the model, plus an explicit list of the M tokens to score, each with the flat
position (row * T + column) of the hidden state that predicts it. Making the
predictor explicit, instead of the usual "shift by one", lets one layout
serve them all:

* one sequence per row, right padded (`rows_to_scored_tokens`);
* a shared prompt: ``prompt + chosen + rejected`` in one row, where the
  first rejected token is predicted from the last prompt token;
* packed rows holding several sequences.

Only the M scored positions go through the LM head: prompt and padding
tokens never pay for a [*, vocab] projection, and the [M, vocab] logits are
built in chunks of `chunk_rows` (each chunk recomputed in the backward pass)
so long batches on a GPU do not hold M x vocab floats at once.

Pure module: torch only (transformers/peft objects are duck-typed).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ScoredTokens",
    "causal_lm_parts",
    "reference_of",
    "rows_to_scored_tokens",
    "sequence_sums",
    "token_logprobs",
]

#: Config attributes that make a model's logits more than ``lm_head(hidden)``;
#: such models take the slow path (full forward, then gather).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                     "lm_head_multiplier")


@dataclass(frozen=True)
class ScoredTokens:
    """Rows for one forward pass and the tokens to score in them.

    input_ids      [R, T] long.
    attention_mask [R, T] long (1 = real token, causal rows), or
                   [R, 1, T, T] bool (True = query may attend to key).
    position_ids   [R, T] long, or None (0..T-1 per row).
    pred_index     [M] long: flat index r * T + t of the hidden state that
                   predicts each scored token.
    target_ids     [M] long: the scored tokens.
    seq_index      [M] long in [0, num_seqs): the sequence each token belongs to.
    num_seqs       S, the number of sequences (sums are returned per sequence).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    pred_index: torch.Tensor
    target_ids: torch.Tensor
    seq_index: torch.Tensor
    num_seqs: int

    def to(self, device: torch.device | str) -> ScoredTokens:
        move = {k: v.to(device, non_blocking=True) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return dataclasses.replace(self, **move)


def rows_to_scored_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor
) -> ScoredTokens:
    """One sequence per row: score every token where `score_mask` is 1 (column 0 never is).

    input_ids, attention_mask, score_mask: [N, T]. Returns S = N sequences.
    Padding may be on either side; positions follow the attention mask.
    """
    n, width = input_ids.shape
    mask = score_mask.bool().clone()
    mask[:, 0] = False  # nothing predicts the first token of a row
    rows, cols = mask.nonzero(as_tuple=True)
    positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return ScoredTokens(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        position_ids=positions,
        pred_index=rows * width + cols - 1,
        target_ids=input_ids[rows, cols],
        seq_index=rows,
        num_seqs=n,
    )


def causal_lm_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) of a causal LM (or a peft wrapper of one), or None.

    None means the model's logits are not plain ``lm_head(decoder(x))``
    (soft-capping, logit scaling) or it has no separate decoder; callers then
    take the full-forward path.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    if text_config is None or any(getattr(text_config, a, None) not in (None, 1.0) for a in _LOGIT_TRANSFORMS):
        return None
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def _chunk_logprobs(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[target]: hidden [m, H], targets [m] -> [m] fp32."""
    logits = head(hidden).float()  # [m, V]
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(model: Any, batch: ScoredTokens, *, chunk_rows: int = 4096) -> torch.Tensor:
    """log πθ(target | context) for every scored token: [M] float32, differentiable.

    Precondition: `batch` is on the model's device. Runs under whatever
    autocast / no_grad context the caller set; the log-softmax is always fp32.
    """
    parts = causal_lm_parts(model)
    if parts is None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits  # [R, T, V]
        flat = logits.reshape(-1, logits.shape[-1]).index_select(0, batch.pred_index).float()
        return flat.gather(1, batch.target_ids[:, None]).squeeze(1) - torch.logsumexp(flat, dim=-1)
    decoder, head = parts
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, use_cache=False).last_hidden_state  # [R, T, H]
    scored = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.pred_index)  # [M, H]
    if scored.shape[0] <= chunk_rows:
        return _chunk_logprobs(head, scored, batch.target_ids)
    # Long batches: never hold all [M, V] logits; each chunk is recomputed on backward.
    pieces = []
    for start in range(0, scored.shape[0], chunk_rows):
        part = slice(start, start + chunk_rows)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logprobs, head, scored[part], batch.target_ids[part], use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(head, scored[part], batch.target_ids[part]))
    return torch.cat(pieces)


def sequence_sums(values: torch.Tensor, seq_index: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Sum per-token values [M] into per-sequence totals [num_seqs] (differentiable)."""
    return values.new_zeros(num_seqs).index_add(0, seq_index, values)


@contextlib.contextmanager
def reference_of(model: Any, frozen: Any | None) -> Iterator[Any]:
    """The reference policy: `frozen` if given, else `model` with its LoRA adapters off."""
    if frozen is not None:
        yield frozen
    elif hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model  # full fine-tuning before any update: the model is its own reference
