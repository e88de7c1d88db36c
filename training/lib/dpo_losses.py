"""Direct Preference Optimisation losses: one small named function per variant.

Every loss takes the pair's log-ratios, i.e. how much more likely the policy
makes each response than the reference does:

    chosen_logratios   [B] = log πθ(y_w | x) − log π_ref(y_w | x)
    rejected_logratios [B] = log πθ(y_l | x) − log π_ref(y_l | x)

(log-probabilities summed over the response tokens only) and returns the
per-pair loss [B]; the trainer averages it. The implicit reward of a response
is β · its log-ratio (Rafailov et al., 2023).

* `sigmoid_loss`: DPO, −log σ(β·Δ) with Δ = chosen − rejected log-ratio.
  With ``label_smoothing = ε > 0`` it is conservative DPO (cDPO, Mitchell
  2023): the label is trusted with probability 1 − ε, i.e.
  −(1 − ε)·log σ(β·Δ) − ε·log σ(−β·Δ).
* `robust_loss`: robust DPO (rDPO, Chowdhury et al. 2024): an unbiased
  estimate of the clean loss when labels are flipped with probability ε,
  [(1 − ε)·(−log σ(β·Δ)) − ε·(−log σ(−β·Δ))] / (1 − 2ε). It equals DPO at
  ε = 0 and, unlike cDPO, can go negative.
* `ipo_loss`: IPO (Azar et al. 2023), (Δ̄ − 1/(2β))², where Δ̄ uses
  log-ratios averaged per response token (as TRL does, after the IPO
  authors): a summed log-ratio would make the target margin length-dependent.

Pure module: torch only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from training.lib.dpo_config import LOSS_NAMES, LossName

__all__ = ["LOSS_NAMES", "LossName", "dpo_loss", "ipo_loss", "robust_loss", "sigmoid_loss"]



def sigmoid_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """DPO (cDPO when `label_smoothing` > 0). Inputs [B], output [B] (>= 0)."""
    logits = beta * (chosen_logratios - rejected_logratios)
    if label_smoothing == 0.0:
        return -F.logsigmoid(logits)
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def robust_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float, label_smoothing: float
) -> torch.Tensor:
    """Robust DPO for a label-flip rate ``label_smoothing`` in [0, 0.5). Inputs [B], output [B]."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    logits = beta * (chosen_logratios - rejected_logratios)
    clean = -F.logsigmoid(logits)
    flipped = -F.logsigmoid(-logits)
    return ((1.0 - label_smoothing) * clean - label_smoothing * flipped) / (1.0 - 2.0 * label_smoothing)


def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """IPO with per-token log-ratios. Inputs [B] (token counts [B], >= 1 enforced), output [B]."""
    chosen = chosen_logratios / chosen_tokens.clamp(min=1)
    rejected = rejected_logratios / rejected_tokens.clamp(min=1)
    return (chosen - rejected - 1.0 / (2.0 * beta)) ** 2


LossFn = Callable[..., torch.Tensor]

# Each entry adapts the common call below to one variant's own signature.
_LOSSES: dict[str, LossFn] = {
    "sigmoid": lambda c, r, *, beta, label_smoothing, chosen_tokens, rejected_tokens: sigmoid_loss(
        c, r, beta=beta, label_smoothing=label_smoothing
    ),
    "robust": lambda c, r, *, beta, label_smoothing, chosen_tokens, rejected_tokens: robust_loss(
        c, r, beta=beta, label_smoothing=label_smoothing
    ),
    "ipo": lambda c, r, *, beta, label_smoothing, chosen_tokens, rejected_tokens: ipo_loss(
        c, r, beta=beta, chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens
    ),
}
assert set(_LOSSES) == set(LOSS_NAMES), "dpo_config.LOSS_NAMES and the loss table disagree"


def dpo_loss(
    name: str,
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """Per-pair loss [B] of the variant `name` (one of `LOSS_NAMES`); token counts [B] are used by IPO only."""
    try:
        fn = _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown DPO loss {name!r}; expected one of {LOSS_NAMES}") from None
    return fn(
        chosen_logratios,
        rejected_logratios,
        beta=beta,
        label_smoothing=label_smoothing,
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
    )
