"""The reward-hacking guard's measurements of a policy: KL from a base model, and reward-model scores.

``kl_from_base(policy, base, prompts, completions)`` is a Monte Carlo estimate of
KL(π_policy || π_base) on the policy's own samples: for each (prompt, completion) the sum over the
completion's tokens of log π_policy − log π_base, averaged over samples. Unbiased when the
completions were sampled from the policy at temperature 1; at other temperatures it is the same
number a PPO run's KL penalty reports, a drift measure rather than the exact divergence. One
sample may be negative; the mean over enough samples is not, in expectation.

``mean_rewards(reward_model, prompts, completions)`` is the reward model's mean score per group.

Pure module: torch and transformers, never Django.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewardmodel.lib.backbones import resolve_model
from training.lib.generation import Message, render_prompt
from training.lib.logprobs import rows_to_scored_tokens, sequence_sums, token_logprobs

__all__ = ["canary_accuracy", "completion_logprobs", "kl_from_base", "mean_rewards"]


def _encode(tokenizer: Any, prompts: Sequence[Sequence[Message]], completions: Sequence[str]):
    """(input_ids [N, T], attention_mask [N, T], score_mask [N, T]) right-padded: prompt rendered with the chat
    template, then the completion's tokens, which alone are scored."""
    import torch

    rows, masks = [], []
    for messages, text in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + answer_ids)
        masks.append([0] * len(prompt_ids) + [1] * len(answer_ids))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        scored[i, : len(mask)] = torch.tensor(mask)
    return input_ids, attention, scored


def completion_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Sequence[Message]],
                        completions: Sequence[str], *, batch_size: int = 8) -> list[float]:
    """log π(completion | prompt) per pair: the sum over the completion's tokens, in input order."""
    import torch

    device = next(model.parameters()).device
    sums: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            part = slice(start, start + batch_size)
            input_ids, attention, scored = _encode(tokenizer, prompts[part], completions[part])
            batch = rows_to_scored_tokens(input_ids, attention, scored).to(device)
            values = token_logprobs(model, batch)
            sums += sequence_sums(values, batch.seq_index, batch.num_seqs).float().cpu().tolist()
    return sums


def _load(path: str, device: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(path)  # an alias such as "smollm2" (the demo's base) or a folder
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return tokenizer, model


def kl_from_base(policy: str, base: str, prompts: Sequence[Sequence[Message]], completions: Sequence[str], *,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 8) -> float:
    """Mean over samples of Σ_tokens (log π_policy − log π_base), both models reading the policy's tokenizer.

    ``policy`` and ``base`` are model folders or aliases (``resolve_model``: the demo base is "smollm2") sharing a vocabulary;
    ``completions[i]`` was sampled from ``policy`` for ``prompts[i]``. 0.0 exactly when they are one folder.
    """
    if not completions:
        raise ValueError("the KL estimate needs at least one sample")
    if policy == base:
        return 0.0
    tokenizer, model = _load(policy, device, dtype)
    mine = completion_logprobs(model, tokenizer, prompts, completions, batch_size=batch_size)
    del model
    _, reference = _load(base, device, dtype)
    theirs = completion_logprobs(reference, tokenizer, prompts, completions, batch_size=batch_size)
    return sum(a - b for a, b in zip(mine, theirs, strict=True)) / len(mine)


def mean_rewards(reward_model: str, groups: dict[Any, tuple[Sequence[Sequence[Message]], Sequence[str]]], *,
                 device: str = "cpu") -> dict[Any, float]:
    """The reward model's mean score of each group's (prompts, completions); the model is read once."""
    from rewardmodel.lib.model import load_reward_model
    from rewardmodel.lib.score import score

    model = load_reward_model(reward_model, device=device)
    means = {}
    for key, (prompts, completions) in groups.items():
        if completions:
            values = score(model, [list(p) for p in prompts], list(completions))
            means[key] = sum(values) / len(values)
    return means


def canary_accuracy(reward_model: Any, pairs: Sequence[dict]) -> tuple[float | None, int, int]:
    """(accuracy, pairs scored, ties left out) of a loaded reward model on labelled pairs.

    Each pair is ``{"prompt", "a", "b", "answer"}`` with ``answer`` "a", "b" or "tie". A tie has no
    right side, so ties are left out and counted; accuracy is the share of the rest where the reward
    model scores the preferred answer higher (an equal score counts as wrong). None without a decided pair.
    """
    from rewardmodel.lib.score import score

    decided = [p for p in pairs if p["answer"] in ("a", "b")]
    ties = len(pairs) - len(decided)
    if not decided:
        return None, 0, ties
    prompts = [p["prompt"] for p in decided]
    a = score(reward_model, prompts, [p["a"] for p in decided])
    b = score(reward_model, prompts, [p["b"] for p in decided])
    right = sum((x > y) if p["answer"] == "a" else (y > x) for p, x, y in zip(decided, a, b, strict=True))
    return right / len(decided), len(decided), ties


def canary_figures(folder: str | Path, pairs: Sequence[dict], *, device: str = "cpu") -> dict:
    """The reward model saved in ``folder``, loaded back (which proves it loads), scored on the canary
    ``pairs``: ``canary_accuracy`` (None without a decided pair), ``canary_pairs`` scored, ``canary_ties``
    left out."""
    from rewardmodel.lib.model import load_reward_model

    model = load_reward_model(folder, device=device)
    accuracy, scored, ties = canary_accuracy(model, pairs)
    return {"canary_accuracy": accuracy, "canary_pairs": scored, "canary_ties": ties}


def measure(plan: dict, paths: dict[str, str], *, device: str = "cpu", dtype: str = "float32") -> dict:
    """The guard's figures for every checkpoint of ``plan`` (JSON-able: a worker runs it here or as a job).

    ``plan``: ``{"reward_model": name or None, "groups": {key: [[messages, answer], ...]},
    "kl": {key: [policy name, base name]}}``; ``paths`` maps each name to a model folder (or alias).
    Returns ``{"proxies": {key: mean reward}, "kl": {key: KL from the base}}`` for the keys it could measure.
    """
    groups = {key: ([m for m, _ in pairs], [t for _, t in pairs]) for key, pairs in plan["groups"].items()}
    proxies = (mean_rewards(paths[plan["reward_model"]], groups, device=device)
               if plan.get("reward_model") else {})
    kls = {key: kl_from_base(paths[policy], paths[base], *groups[key], device=device, dtype=dtype)
           for key, (policy, base) in plan["kl"].items() if groups.get(key, ((), ()))[1]}
    return {"proxies": proxies, "kl": kls}
