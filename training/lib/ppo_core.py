"""The arithmetic of PPO for language models, as small pure tensor functions.

Shapes: B rollouts, T response positions. ``mask`` [B, T] is 1.0 on real
response tokens (up to and including the first end-of-sequence token) and
0.0 on the padding after them; every function here assumes each row's mask
is a prefix of ones followed by zeros, which is what sampling produces.

Position t of a row is the step "emit response token t": ``logprobs[:, t]``
is log π(token t | prompt, tokens < t), ``values[:, t]`` is V(prompt,
tokens < t). The episode ends after the last real token; nothing is
bootstrapped past it.

No model code and no I/O here, so every function can be checked against a
hand computation (tests/training/test_ppo.py does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "PolicyLoss",
    "ValueLoss",
    "adaptive_kl_coef",
    "clipped_policy_loss",
    "clipped_value_loss",
    "gae",
    "kl_penalized_rewards",
    "masked_mean",
    "masked_whiten",
    "token_entropy",
]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (any matching shapes); 0.0 when the mask is empty."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``values`` [B, T] shifted to mean 0 and scaled to variance 1 over the masked entries; 0 elsewhere.

    The variance is the biased (population) one, so a single masked entry
    whitens to 0 instead of dividing by zero.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards [B, T] and per-token KL estimates [B, T].

    scores [B] (the reward model's score of each whole response); logprobs,
    ref_logprobs, mask [B, T]. Every real token gets ``-kl_coef * kl_t`` with
    ``kl_t = logprobs - ref_logprobs`` (the "k1" estimator: unbiased for
    KL(π‖π_ref) summed over a sampled response); the last real token also
    gets the score. Rows with no real token get nothing. Padding is 0 in both.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    lengths = mask.sum(dim=1).long()  # [B]
    has_tokens = lengths > 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards[rows, lengths[has_tokens] - 1] += scores[has_tokens].to(rewards.dtype)
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation: (advantages [B, T], returns [B, T]).

    rewards, values, mask [B, T]. With δ_t = r_t + γ·V_{t+1} − V_t, where
    V_{t+1} = 0 after the last real token (the episode ends there),
    A_t = δ_t + γλ·A_{t+1}. returns = advantages + values are the value
    targets. Both outputs are 0 on padding.
    """
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Zeroing at padding makes the first real step from the end start a fresh sum.
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class PolicyLoss:
    """``loss``: scalar to minimise; ``clip_fraction``: share of real tokens whose
    clipped term was the larger one (the gradient is cut there); ``approx_kl``:
    mean of ½(log ratio)², a cheap gauge of how far the update moved."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> PolicyLoss:
    """PPO's clipped surrogate, averaged over real tokens.

    logprobs [B, T] (current policy, with grad), old_logprobs [B, T] (the
    policy that sampled), advantages [B, T], mask [B, T]. With
    ρ = exp(logprobs − old_logprobs) the per-token loss is
    max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return PolicyLoss(loss=loss, clip_fraction=clip_fraction, approx_kl=approx_kl)


@dataclass(frozen=True)
class ValueLoss:
    """``loss``: scalar to minimise; ``clip_fraction``: share of real tokens where the clipped error won."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float = 0.2,
) -> ValueLoss:
    """½·max((V − R)², (V_clip − R)²) averaged over real tokens.

    values [B, T] (with grad), old_values [B, T] (at rollout time), returns
    [B, T], mask [B, T]. V_clip = old + clip(V − old, −c, c) stops one
    minibatch from moving the value far from where the advantages were
    computed.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > error).float(), mask)
    return ValueLoss(loss=loss, clip_fraction=clip_fraction)


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target: float, horizon: int, n_steps: int) -> float:
    """The next KL coefficient of Ziegler et al.'s proportional controller (2019).

    ``observed_kl``: mean KL per response (nats, summed over its tokens) in
    the last batch; ``n_steps``: rollouts in that batch. The error
    e = clip(observed / target − 1, −0.2, 0.2) moves the coefficient by the
    factor 1 + e·n_steps/horizon: up when the policy drifts past the target,
    down when it stays closer. A non-finite KL leaves the coefficient alone.
    """
    if target <= 0 or horizon <= 0:
        raise ValueError("target and horizon must be > 0")
    if not math.isfinite(observed_kl):
        return kl_coef
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [B, T] (nats) of the categorical distributions with logits [B, T, V]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
