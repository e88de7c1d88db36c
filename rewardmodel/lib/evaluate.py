"""Held-out evaluation of a reward model on preference pairs.

`predict_pair_rewards` runs the model; `preference_metrics` turns rewards
into numbers. Accuracy counts a reward tie as half right and excludes tie
pairs (there is no right answer); ECE bins the confidence max(p, 1 - p) of
p = sigmoid(r_c - r_r) in ten bins over [0.5, 1]. Where pairs carry the
annotators' `agreement`, accuracy is also reported as a fraction of it: a
model cannot be expected to agree with the majority more often than the
annotators agree among themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rewardmodel.lib.data import EncodedPair, PairCollator, bucketed_batches
from rewardmodel.lib.losses import davidson_log_probs, rao_kupper_log_probs
from rewardmodel.lib.model import RewardModel
from rewardmodel.lib.runtime import forward_context

TIE_LOG_PROBS = {"davidson": davidson_log_probs, "rao_kupper": rao_kupper_log_probs}


@torch.inference_mode()
def predict_pair_rewards(
    model: RewardModel,
    pairs: Sequence[EncodedPair],
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    shared_prefix: bool = False,
    pack: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [N, K], rejected [N, K]) float32 on CPU, in the order of `pairs`."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    collate = PairCollator(
        model.pad_id, shared_prefix=shared_prefix, pack=pack, causal=model.causal, mask_device=device
    )
    lengths = [p.shared_length if shared_prefix else p.padded_length for p in pairs]
    k = model.ensemble_size
    chosen, rejected = torch.zeros(len(pairs), k), torch.zeros(len(pairs), k)
    with forward_context(device, autocast_dtype):
        for idx in bucketed_batches(lengths, batch_size, bucket_size=1, rng=None):
            c, r = model.pair_rewards(collate([pairs[i] for i in idx]).to(device))
            chosen[idx], rejected[idx] = c.float().cpu(), r.float().cpu()
    model.train(was_training)
    return chosen, rejected


def expected_calibration_error(diff: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of P(chosen wins) = sigmoid(diff) for non-tie pairs; diff [N]."""
    if diff.numel() == 0:
        return float("nan")
    p = torch.sigmoid(diff)
    confidence = torch.maximum(p, 1 - p)
    correct = (diff > 0).float() + 0.5 * (diff == 0).float()
    bins = ((confidence - 0.5) * 2 * n_bins).long().clamp(0, n_bins - 1)
    ece = torch.zeros(())
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return float(ece)


def _accuracy(diff: torch.Tensor) -> float:
    if diff.numel() == 0:
        return float("nan")
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def preference_metrics(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    pairs: Sequence[EncodedPair],
    *,
    loss_name: str = "bt",
    tie_param: torch.Tensor | None = None,
) -> dict[str, float]:
    """Flat metrics dict. chosen, rejected: [N] or [N, K] (heads are averaged; their spread is reported)."""
    if chosen.dim() == 1:
        chosen, rejected = chosen[:, None], rejected[:, None]
    diff_heads = (chosen - rejected).float()
    diff = diff_heads.mean(dim=1)
    tie = torch.tensor([p.tie for p in pairs], dtype=torch.bool)
    strict = diff[~tie]
    metrics: dict[str, float] = {
        "pairs": float(len(pairs)),
        "tie_pairs": float(tie.sum()),
        "accuracy": _accuracy(strict),
        "loss": float(-F.logsigmoid(strict).mean()) if strict.numel() else float("nan"),
        "ece": expected_calibration_error(strict),
        "reward_margin_mean": float(strict.mean()) if strict.numel() else float("nan"),
    }
    if chosen.shape[1] > 1:
        metrics["ensemble_std_mean"] = float(torch.cat([chosen, rejected]).std(dim=1).mean())
        metrics["ensemble_disagreement"] = float(((diff_heads > 0) != (diff[:, None] > 0)).float().mean())
    for level in (1, 2, 3, None):
        picked = torch.tensor([(p.strength == level) and not p.tie for p in pairs], dtype=torch.bool)
        name = "none" if level is None else str(level)
        metrics[f"n_strength_{name}"] = float(picked.sum())
        metrics[f"accuracy_strength_{name}"] = _accuracy(diff[picked])
    with_agreement = torch.tensor([p.agreement is not None and not p.tie for p in pairs], dtype=torch.bool)
    if with_agreement.any():
        agreement = torch.tensor([p.agreement for p in pairs if p.agreement is not None and not p.tie])
        accuracy = _accuracy(diff[with_agreement])
        metrics["agreement_mean"] = float(agreement.mean())
        metrics["accuracy_with_agreement"] = accuracy
        metrics["accuracy_vs_agreement"] = accuracy / max(float(agreement.mean()), 1e-9)
    if tie.any():
        metrics["tie_abs_margin_mean"] = float(diff[tie].abs().mean())
    if loss_name in TIE_LOG_PROBS and tie_param is not None:
        log_win, log_tie = TIE_LOG_PROBS[loss_name](diff, tie_param.detach().cpu())
        metrics["tie_aware_loss"] = float(-torch.where(tie, log_tie, log_win).mean())
        if tie.any():
            metrics["tie_prob_on_ties"] = float(log_tie[tie].exp().mean())
        if (~tie).any():
            metrics["tie_prob_on_nonties"] = float(log_tie[~tie].exp().mean())
    return metrics
