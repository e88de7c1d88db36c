"""Loss functions: closed forms, tie handling, ensemble broadcasting."""

from __future__ import annotations

import math

import torch

from rewardmodel.lib.losses import (
    bradley_terry_loss,
    davidson_log_probs,
    davidson_loss,
    rao_kupper_log_probs,
    rao_kupper_loss,
)


def test_bradley_terry_closed_form_and_margin() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert abs(float(bradley_terry_loss(chosen, rejected)) - expected) < 1e-6
    with_margin = bradley_terry_loss(chosen, rejected, torch.tensor([1.0, 0.0]))
    assert abs(float(with_margin) - (math.log(2) + math.log1p(math.exp(2.0))) / 2) < 1e-6


def test_ensemble_heads_share_the_pair_label() -> None:
    chosen, rejected = torch.randn(5, 3), torch.randn(5, 3)
    margin = torch.rand(5)
    per_head = [bradley_terry_loss(chosen[:, k], rejected[:, k], margin) for k in range(3)]
    assert torch.allclose(bradley_terry_loss(chosen, rejected, margin), torch.stack(per_head).mean())


def test_tie_models_are_probabilities() -> None:
    diff = torch.linspace(-6, 6, 25)
    for log_probs, param in ((davidson_log_probs, torch.tensor(0.3)), (rao_kupper_log_probs, torch.tensor(-0.5))):
        log_win, log_tie = log_probs(diff, param)
        log_loss, _ = log_probs(-diff, param)
        total = log_win.exp() + log_tie.exp() + log_loss.exp()
        assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
        _, log_tie_flipped = log_probs(-diff, param)
        assert torch.allclose(log_tie, log_tie_flipped, atol=1e-6)  # a tie has no order


def test_ties_pull_rewards_together_and_nonties_apart() -> None:
    for loss_fn in (davidson_loss, rao_kupper_loss):
        param = torch.tensor(0.0)
        tie, win = torch.tensor([True]), torch.tensor([False])
        near, far = torch.tensor([0.1]), torch.tensor([3.0])
        zero = torch.tensor([0.0])
        assert loss_fn(near, zero, tie, param) < loss_fn(far, zero, tie, param)
        assert loss_fn(far, zero, win, param) < loss_fn(near, zero, win, param)
        d = torch.tensor([0.5], requires_grad=True)
        loss_fn(d, zero, tie, param).backward()
        assert d.grad is not None and float(d.grad) > 0  # gradient descent shrinks a tie's gap


def test_davidson_without_ties_tends_to_bradley_terry() -> None:
    chosen, rejected = torch.randn(64), torch.randn(64)
    no_ties = torch.zeros(64, dtype=torch.bool)
    tiny_nu = torch.tensor(-30.0)
    assert torch.allclose(davidson_loss(chosen, rejected, no_ties, tiny_nu), bradley_terry_loss(chosen, rejected))


def test_weights_make_a_weighted_mean() -> None:
    chosen, rejected = torch.randn(6, 2), torch.randn(6, 2)
    weights = torch.tensor([[2.0, 0.0]] * 6)
    expected = bradley_terry_loss(chosen[:, 0], rejected[:, 0])
    assert torch.allclose(bradley_terry_loss(chosen, rejected, weights=weights), expected)
