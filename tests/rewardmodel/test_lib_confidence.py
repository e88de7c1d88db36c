"""Pairs weighted by the reliability model's confidence (``RewardConfig.weight_by_confidence``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.data import PreferencePair, parse_pair
from rewardmodel.lib.model import load_reward_model
from rewardmodel.lib.score import score
from rewardmodel.lib.train import train_reward_model
from tests.tiny import counting_pairs, save_tiny_bert


def _config(backbone: Path, **overrides: object) -> RewardConfig:
    base = dict(backbone=str(backbone), learning_rate=3e-3, epochs=3, batch_size=16, eval_fraction=0.0,
                warmup_ratio=0.1, num_threads=1)
    return RewardConfig(**{**base, **overrides})


def _accuracy(folder: Path, pairs: list[PreferencePair]) -> float:
    model = load_reward_model(folder)
    chosen = score(model, [p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = score(model, [p.prompt for p in pairs], [p.rejected for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def test_a_snapshot_row_carries_its_confidence_as_a_weight():
    row = {"prompt": "q1", "chosen": "good", "rejected": "bad", "confidence": 0.8}
    assert parse_pair(row).confidence_weight() == pytest.approx(0.6)
    assert parse_pair({**row, "confidence": 0.5}).confidence_weight() == 0.0
    assert parse_pair({**row, "confidence": None}).confidence_weight() == 1.0  # no posterior: a full pair
    assert parse_pair({k: v for k, v in row.items() if k != "confidence"}).confidence_weight() == 1.0


def test_weighting_by_confidence_learns_the_truth_through_heavy_label_noise(tmp_path: Path):
    """45% of the labels are flipped; the flipped ones come with a low confidence (as a reliability fit
    gives pairs decided by unreliable people). Unweighted, the reward model barely sees the rule;
    weighted, it learns it."""
    noisy = counting_pairs(200, 4, noise=0.45, seed=0)
    pairs = [dataclasses.replace(p, confidence=0.6 if p.chosen.split().count("good") < p.rejected.split().count("good")
                                 else 0.9) for p in noisy]
    clean = counting_pairs(60, 4, noise=0.0, seed=9)
    backbone = save_tiny_bert(tmp_path / "bert")

    train_reward_model(_config(backbone), pairs, tmp_path / "plain")
    weighted = train_reward_model(_config(backbone, weight_by_confidence=True), pairs, tmp_path / "weighted")

    plain_accuracy, weighted_accuracy = _accuracy(tmp_path / "plain", clean), _accuracy(tmp_path / "weighted", clean)
    assert weighted_accuracy >= 0.85 and weighted_accuracy >= plain_accuracy + 0.1, (plain_accuracy, weighted_accuracy)
    assert weighted.metrics["train_pairs"] == len(pairs)


def test_only_coin_flips_leave_nothing_to_learn(tmp_path: Path):
    pairs = [dataclasses.replace(p, confidence=0.5) for p in counting_pairs(8, 2, noise=0.0, seed=0)]
    with pytest.raises(ValueError, match="weight 0"):
        train_reward_model(_config(save_tiny_bert(tmp_path / "bert"), weight_by_confidence=True), pairs,
                           tmp_path / "out")


def test_weights_and_an_ensemble_combine(tmp_path: Path):
    pairs = [dataclasses.replace(p, confidence=0.9) for p in counting_pairs(16, 2, noise=0.0, seed=0)]
    result = train_reward_model(_config(save_tiny_bert(tmp_path / "bert"), weight_by_confidence=True, ensemble_size=3,
                                        epochs=1), pairs, tmp_path / "out")
    assert torch.isfinite(torch.tensor(result.history[-1]["loss"]))
