"""Batched scoring of (prompt, completion) pairs with a trained reward model.

Used by PPO (reward of a rollout) and by active selection (which pairs to ask
about: ``head_rewards``, read by ``training.selection``). Text is formatted and truncated exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rewardmodel.lib.data import Prompt, bucketed_batches
from rewardmodel.lib.model import RewardModel
from rewardmodel.lib.runtime import attention_kernels


def _collate(seqs: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask [N, T] right-padded, last_index [N] flat indices."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    last_index = torch.arange(len(seqs)) * width + attention_mask.sum(1) - 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "last_index": last_index}


@torch.inference_mode()
def head_rewards(
    model: RewardModel, prompts: Sequence[Prompt], completions: Sequence[str], batch_size: int = 32
) -> torch.Tensor:
    """Every ensemble head's reward per completion: [N, K] fp32 on the CPU, in input order.

    prompts[i] (a string or chat messages) goes with completions[i]. Active selection reads the heads
    one by one (their disagreement is what BALD measures); ``score_with_uncertainty`` summarises them.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if not completions:
        return torch.zeros((0, model.ensemble_size))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seqs = model.formatter.encode_for_scoring(prompts, completions, model.max_length)
    out = torch.zeros((len(seqs), model.ensemble_size))
    # Sorting by length keeps padding (wasted compute) small.
    for idx in bucketed_batches([len(s) for s in seqs], batch_size, bucket_size=1, rng=None):
        inputs = {k: v.to(device) for k, v in _collate([seqs[i] for i in idx], model.pad_id).items()}
        with attention_kernels(device):
            rewards = model(inputs["input_ids"], inputs["attention_mask"], last_index=inputs["last_index"])
        out[idx] = rewards.float().cpu()  # [n, K]
    model.train(was_training)
    return out


def score_with_uncertainty(
    model: RewardModel, prompts: Sequence[Prompt], completions: Sequence[str], batch_size: int = 32
) -> tuple[list[float], list[float]]:
    """(mean reward, std across ensemble heads) per completion; std is 0.0 with one head.

    prompts[i] (a string or chat messages) goes with completions[i].
    """
    rewards = head_rewards(model, prompts, completions, batch_size)
    if not len(rewards):
        return [], []
    stds = rewards.std(dim=1) if rewards.shape[1] > 1 else torch.zeros(len(rewards))
    return rewards.mean(dim=1).tolist(), stds.tolist()


def score(
    model: RewardModel, prompts: Sequence[Prompt], completions: Sequence[str], batch_size: int = 32
) -> list[float]:
    """Reward of each completion (ensemble mean), in input order."""
    return score_with_uncertainty(model, prompts, completions, batch_size)[0]
