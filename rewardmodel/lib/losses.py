"""Pairwise preference losses, one small function per model of a judgement.

All functions take rewards of shape [B] (or [B, K] for K ensemble heads,
the extra dims broadcast) and return a scalar: the mean negative
log-likelihood over the pairs. With d = r_chosen - r_rejected:

* Bradley–Terry:  P(chosen > rejected) = sigmoid(d [- margin])
* Davidson (1970): with nu = exp(log_nu) > 0,
    P(win) = 1 / (1 + e^-d + nu e^-d/2),  P(tie) = nu / (e^d/2 + e^-d/2 + nu)
* Rao–Kupper (1967): with eta = softplus(raw_eta) > 0,
    P(win) = sigmoid(d - eta),  P(tie) = sigmoid(eta - d) - sigmoid(-eta - d)

In the tie-aware losses a tie pair contributes -log P(tie) and any other
pair -log P(win); the order of a tie's two texts does not matter.

`weights` (optional, shaped like the rewards) turn the mean into a weighted
mean; ensembles use it for per-head bootstrap resampling of the pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log sigmoid(r_c - r_r - margin), averaged. chosen, rejected: [B] or [B, K]; margin: [B] or None.

    Identical to TRL RewardTrainer's loss (with or without its "margin" column).
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - _expand(margin, diff)
    return _mean(-F.logsigmoid(diff), weights)


def davidson_log_probs(diff: torch.Tensor, log_nu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P(win), log P(tie)) under Davidson's model; diff: [...], log_nu: scalar. Same shape out."""
    log_nu = log_nu.to(diff.dtype).expand_as(diff)
    terms = torch.stack([torch.zeros_like(diff), -diff, log_nu - diff / 2], dim=-1)
    log_win = -torch.logsumexp(terms, dim=-1)
    log_tie = log_nu - torch.logsumexp(torch.stack([diff / 2, -diff / 2, log_nu], dim=-1), dim=-1)
    return log_win, log_tie


def davidson_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    tie: torch.Tensor,
    log_nu: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Davidson tie-aware NLL. chosen, rejected: [B] or [B, K]; tie: [B] bool; log_nu: scalar (learned)."""
    return _tie_aware_nll(*davidson_log_probs(chosen - rejected, log_nu), tie, weights)


def rao_kupper_log_probs(diff: torch.Tensor, raw_eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P(win), log P(tie)) under Rao–Kupper; diff: [...], raw_eta: scalar. Same shape out."""
    eta = F.softplus(raw_eta.to(diff.dtype))
    log_win = F.logsigmoid(diff - eta)
    # sigmoid(x) - sigmoid(y) = e^y (e^(x-y) - 1) / ((1 + e^x)(1 + e^y)), x - y = 2 eta
    x, y = eta - diff, -eta - diff
    log_tie = y + torch.log(torch.expm1(2 * eta)) - F.softplus(x) - F.softplus(y)
    return log_win, log_tie


def rao_kupper_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    tie: torch.Tensor,
    raw_eta: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rao–Kupper tie-aware NLL. chosen, rejected: [B] or [B, K]; tie: [B] bool; raw_eta: scalar (learned)."""
    return _tie_aware_nll(*rao_kupper_log_probs(chosen - rejected, raw_eta), tie, weights)


def _tie_aware_nll(log_win: torch.Tensor, log_tie: torch.Tensor, tie: torch.Tensor,
                   weights: torch.Tensor | None) -> torch.Tensor:
    """Mean NLL: -log P(tie) for tie pairs, -log P(chosen wins) for the rest."""
    return _mean(-torch.where(_expand(tie, log_win), log_tie, log_win), weights)


def _mean(nll: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return nll.mean()
    return (nll * weights).sum() / weights.sum().clamp_min(1e-8)


def _expand(per_pair: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> broadcastable against [B, ...] (ensemble heads share a pair's label)."""
    return per_pair.reshape(per_pair.shape + (1,) * (like.dim() - per_pair.dim()))


def pair_loss(
    name: str,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    tie: torch.Tensor,
    margin: torch.Tensor | None,
    tie_param: torch.Tensor | None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch by config name. Non-tie losses must be given batches without ties."""
    if name in ("davidson", "rao_kupper"):
        assert tie_param is not None, "tie-aware losses need their learned parameter"
        fn = davidson_loss if name == "davidson" else rao_kupper_loss
        return fn(chosen, rejected, tie, tie_param, weights)
    return bradley_terry_loss(chosen, rejected, margin, weights)


#: Initial value of the learned tie parameter per loss: nu = 1 (Davidson), eta ~ 0.69 (Rao–Kupper).
TIE_PARAM_INIT = {"davidson": 0.0, "rao_kupper": 0.0}
