"""DPO data: preference pairs -> token ids -> padded batches with one forward pass per batch.

Tokenisation reuses the reward-model library's `PairFormatter`: with a chat
template, a pair is the conversation with the response as the final
assistant turn, and the prompt part is the longest token prefix that
"prompt + generation prompt" and both full renderings share (exactly TRL's
rule, so the same pair gives TRL's token ids); without one, the prompt is
used verbatim and the response gets the tokenizer's EOS.

Truncation (never drops a pair; `EncodeReport` counts what was cut):

* a prompt longer than `max_prompt_length` loses tokens from the LEFT (the
  most recent turns survive; a leading BOS is kept);
* then each response is cut from the RIGHT to fit ``max_length`` together
  with the prompt.

Ties are skipped (DPO has no tie likelihood) and counted.

`DPOCollator` puts chosen and rejected into ONE forward pass, in one of two
layouts (see `DPOBatch`): separate rows ``[prompt+chosen; prompt+rejected]``
(any causal LM), or a shared prefix ``prompt + chosen + rejected`` per row,
where the rejected tokens attend to the prompt but not to the chosen tokens
and restart their positions after the prompt. The shared prefix encodes the
prompt once instead of twice.

Pure module: torch and the reward-model library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewardmodel.lib.data import PairFormatter, PreferencePair
from training.lib.logprobs import ScoredTokens

__all__ = [
    "SHARED_PREFIX_TYPES",
    "DPOBatch",
    "DPOCollator",
    "DPOExample",
    "EncodeReport",
    "encode_pairs",
    "fit_lengths",
    "supports_shared_prefix",
]

#: Architectures whose decoder honours a custom 4D attention mask plus
#: position ids through transformers' masking path (sdpa / eager attention).
SHARED_PREFIX_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
_NO_LIMIT = 1 << 62


def supports_shared_prefix(model: Any) -> bool:
    """True if `model` (or the base of a peft model) is known to honour the shared-prefix 4D mask."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return (base.config.model_type in SHARED_PREFIX_TYPES
            and base.config._attn_implementation in ("sdpa", "eager"))  # flash attention ignores 4D masks


@dataclass(frozen=True)
class DPOExample:
    """Token ids of one non-tie pair; a sequence is ``prompt_ids + chosen_ids`` (or rejected)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_truncated: bool = False
    response_truncated: bool = False

    @property
    def real_tokens(self) -> int:
        """Tokens of both full sequences, as a trainer that encodes the prompt twice counts them."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    @property
    def separate_length(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def shared_length(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    def scored_counts(self) -> tuple[int, int]:
        """Scored tokens of (chosen, rejected): all of them, unless the prompt is empty (nothing predicts token 0)."""
        skip = 0 if self.prompt_ids else 1
        return max(0, len(self.chosen_ids) - skip), max(0, len(self.rejected_ids) - skip)


@dataclass(frozen=True)
class EncodeReport:
    """What happened to the input pairs: every pair is either an example or a counted tie."""

    pairs_in: int
    ties_skipped: int
    examples: int
    prompt_truncated: int
    response_truncated: int

    def as_metrics(self) -> dict[str, float]:
        return {
            "pairs_in": float(self.pairs_in),
            "ties_skipped": float(self.ties_skipped),
            "pairs_used": float(self.examples),
            "pairs_dropped": 0.0,  # by construction; reported so that nobody has to wonder
            "prompt_truncated": float(self.prompt_truncated),
            "response_truncated": float(self.response_truncated),
        }


def fit_lengths(
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    *,
    max_length: int,
    max_prompt_length: int,
    keep_first: Iterable[int] = (),
) -> DPOExample:
    """Apply the truncation rule of the module doc. Precondition: max_prompt_length < max_length."""
    head = prompt[:1] if prompt and prompt[0] in set(keep_first) else []
    body = prompt[len(head):]
    excess = len(prompt) - max_prompt_length
    if excess > 0:
        body = body[min(excess, len(body)):]
    room = max_length - len(head) - len(body)
    return DPOExample(
        prompt_ids=head + body,
        chosen_ids=chosen[:room],
        rejected_ids=rejected[:room],
        prompt_truncated=excess > 0,
        response_truncated=max(len(chosen), len(rejected)) > room,
    )


def encode_pairs(
    tokenizer: Any, pairs: Sequence[PreferencePair], *, max_length: int, max_prompt_length: int
) -> tuple[list[DPOExample], EncodeReport]:
    """Tokenise and truncate the non-tie pairs, in input order; ties are skipped and counted."""
    if not 0 < max_prompt_length < max_length:
        raise ValueError(f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})")
    kept = [pair for pair in pairs if not pair.tie]
    formatter = PairFormatter(tokenizer, causal=True)
    encoded = formatter.encode(kept, _NO_LIMIT)  # full ids; our own rule cuts below
    examples = [
        fit_lengths(e.prompt_ids, e.chosen_ids, e.rejected_ids, max_length=max_length,
                    max_prompt_length=max_prompt_length, keep_first=formatter.keep_first)
        for e in encoded
    ]
    report = EncodeReport(
        pairs_in=len(pairs),
        ties_skipped=len(pairs) - len(kept),
        examples=len(examples),
        prompt_truncated=sum(e.prompt_truncated for e in examples),
        response_truncated=sum(e.response_truncated for e in examples),
    )
    return examples, report


@dataclass(frozen=True)
class DPOBatch:
    """B pairs in one forward pass.

    tokens: `ScoredTokens` over S = 2B sequences: sequence b is pair b's
      chosen response, B + b its rejected one. Scored tokens are ordered pair
      by pair (pair 0 chosen, pair 0 rejected, pair 1 chosen, ...), the order
      `ref_token_logps` and `DPOCollator.split` use.
      Separate layout: R = 2B rows (chosen rows, then rejected), right padded,
        attention_mask [2B, T] long, position_ids None.
      Shared layout: R = B rows ``prompt + chosen + rejected``, attention_mask
        [B, 1, T, T] bool, position_ids [B, T] (rejected restarts after the prompt).
    ref_token_logps: [M] float32 reference log-probs of the scored tokens, or None.
    chosen_lengths / rejected_lengths: [B] float32 scored tokens per response.
    real_tokens: tokens of both full sequences (prompt counted twice), the
      figure throughput is quoted in; computed_tokens: non-pad positions run
      through the model; padded_tokens: R * T.
    """

    tokens: ScoredTokens
    ref_token_logps: torch.Tensor | None
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    num_pairs: int
    real_tokens: int
    computed_tokens: int
    padded_tokens: int

    def to(self, device: torch.device | str) -> DPOBatch:
        ref = None if self.ref_token_logps is None else self.ref_token_logps.to(device, non_blocking=True)
        return dataclasses.replace(
            self, tokens=self.tokens.to(device), ref_token_logps=ref,
            chosen_lengths=self.chosen_lengths.to(device), rejected_lengths=self.rejected_lengths.to(device),
        )


class DPOCollator:
    """Pads `DPOExample`s into a `DPOBatch`, dynamically to the batch's longest row."""

    def __init__(self, pad_id: int, *, shared_prefix: bool) -> None:
        self.pad_id = pad_id
        self.shared_prefix = shared_prefix

    def __call__(self, examples: Sequence[DPOExample], reference: Sequence[torch.Tensor] | None = None) -> DPOBatch:
        """`reference[i]`, if given, holds example i's reference log-probs [n_chosen + n_rejected] (see `split`)."""
        if not examples:
            raise ValueError("empty batch")
        rows, positions, segments, preds, targets, seqs = (
            self._shared(examples) if self.shared_prefix else self._separate(examples)
        )
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        real = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            real[i, : len(row)] = True
        position_ids = None
        attention_mask: torch.Tensor = real.long()
        if self.shared_prefix:
            position_ids = _pad(positions, width)
            attention_mask = _shared_prefix_mask(_pad(segments, width), real)
        counts = [e.scored_counts() for e in examples]
        tokens = ScoredTokens(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pred_index=torch.tensor([r * width + c for r, c in preds], dtype=torch.long),
            target_ids=torch.tensor(targets, dtype=torch.long),
            seq_index=torch.tensor(seqs, dtype=torch.long),
            num_seqs=2 * len(examples),
        )
        return DPOBatch(
            tokens=tokens,
            ref_token_logps=None if reference is None else torch.cat([r.float() for r in reference]),
            chosen_lengths=torch.tensor([c for c, _ in counts], dtype=torch.float32),
            rejected_lengths=torch.tensor([r for _, r in counts], dtype=torch.float32),
            num_pairs=len(examples),
            real_tokens=sum(e.real_tokens for e in examples),
            computed_tokens=sum(len(r) for r in rows),
            padded_tokens=input_ids.numel(),
        )

    @staticmethod
    def split(token_values: torch.Tensor, examples: Sequence[DPOExample]) -> list[torch.Tensor]:
        """Cut a batch's per-token values [M] into one tensor per example (chosen tokens, then rejected)."""
        sizes = [sum(e.scored_counts()) for e in examples]
        return list(token_values.detach().float().cpu().split(sizes))

    @staticmethod
    def _separate(examples: Sequence[DPOExample]) -> tuple[list[list[int]], None, None, list, list[int], list[int]]:
        n = len(examples)
        rows = [e.prompt_ids + e.chosen_ids for e in examples] + [e.prompt_ids + e.rejected_ids for e in examples]
        preds: list[tuple[int, int]] = []
        targets: list[int] = []
        seqs: list[int] = []
        for b, e in enumerate(examples):
            p = len(e.prompt_ids)
            for row, response in ((b, e.chosen_ids), (n + b, e.rejected_ids)):
                for j in range(0 if p else 1, len(response)):
                    preds.append((row, p + j - 1))
                    targets.append(response[j])
                    seqs.append(row)
        return rows, None, None, preds, targets, seqs

    @staticmethod
    def _shared(examples: Sequence[DPOExample]) -> tuple[list[list[int]], list, list, list, list[int], list[int]]:
        n = len(examples)
        rows, positions, segments = [], [], []
        preds: list[tuple[int, int]] = []
        targets: list[int] = []
        seqs: list[int] = []
        for b, e in enumerate(examples):
            p, c, r = len(e.prompt_ids), len(e.chosen_ids), len(e.rejected_ids)
            rows.append(e.prompt_ids + e.chosen_ids + e.rejected_ids)
            positions.append(list(range(p + c)) + list(range(p, p + r)))
            segments.append([0] * p + [1] * c + [2] * r)
            first = 0 if p else 1
            for j in range(first, c):
                preds.append((b, p + j - 1))
                targets.append(e.chosen_ids[j])
                seqs.append(b)
            for j in range(first, r):
                # The first rejected token follows the prompt, not the chosen response.
                preds.append((b, p - 1 if j == 0 else p + c + j - 1))
                targets.append(e.rejected_ids[j])
                seqs.append(n + b)
        return rows, positions, segments, preds, targets, seqs


def _pad(rows: list[list[int]], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _shared_prefix_mask(segments: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool from segments [B, T] (0 prompt, 1 chosen, 2 rejected) and real [B, T].

    Causal, keys must be real, rejected queries never see chosen keys.
    Padding queries still see earlier real keys, so no softmax row is empty.
    """
    width = segments.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    cross = (segments[:, :, None] == 2) & (segments[:, None, :] == 1)
    return (causal[None] & real[:, None, :] & ~cross)[:, None]
