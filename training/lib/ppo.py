"""PPO of a causal LM against a reward model: config + prompts + folder in, result out.

Each step samples ``batch_size`` rollouts from the policy, scores each whole
response once (a reward-model folder, a ``rule:`` spec, or a ``reward_fn``),
charges every token ``kl_coef * (log π − log π_ref)``, computes GAE with a
value head, and runs ``ppo_epochs`` passes of shuffled minibatches of the
clipped policy + value loss (the maths lives in ``ppo_core``). The value head
is one linear layer on the policy's last hidden state (a shared backbone: the
values come out of the same forward pass as the log-probabilities). The
reference is a frozen copy of the starting policy, or, with LoRA, the same
weights with the adapters switched off. Weights train in the dtype the
config's ``weights`` picks (``rewardmodel.lib.precision``); the saved policy is
in the base model's own dtype.

Under torchrun (`training.lib.distributed`) each of the N ranks rolls out its
share of each step's prompts (its own sampling stream), advantages are whitened
and the KL measured over all ranks' rollouts, each minibatch is the ranks'
shares of one global minibatch with gradients averaged over them (as DDP does),
and rank 0 alone reports and publishes, after a barrier. ``batch_size`` and
``mini_batch_size`` must then be multiples of N, so every rank runs as many
forward passes as every other. With ``parallel="shard"`` (full fine-tuning)
the policy and its reference copy are sharded (FSDP2, `training.lib.sharding`):
each rank holds 1/N of their weights and of the policy's gradients and AdamW
state, sampling runs with ``synced_gpus`` (a rank whose rows have ended keeps
stepping the model with the others), and the whole weights are gathered to
rank 0's CPU to publish. The value head (one row of weights) and the reward
model (inference only) stay whole on every rank; the value head's gradients
are summed over the ranks as in the replicated run.

Pure module: never imports Django or Celery. The configuration lives in
``training.lib.ppo_config`` (importable without torch); it is re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardmodel.lib.backbones import resolve_model
from rewardmodel.lib.model import load_reward_model
from rewardmodel.lib.precision import dtype_name, resolve_weights_dtype, stored_dtype
from rewardmodel.lib.ranks import SOLO, Team, current_team
from rewardmodel.lib.runtime import forward_context
from rewardmodel.lib.score import score
from training.lib.checkpoint import META_FILE, ensure_free, save_checkpoint
from training.lib.generation import eos_token_ids, render_prompt
from training.lib.modes import quantized_load_options, resolve_run_mode
from training.lib.ppo_config import PPOConfig
from training.lib.ppo_core import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalized_rewards,
    masked_whiten,
    token_entropy,
)
from training.lib.sharding import (
    clip_grad_norm,
    full_state_dict,
    reshard,
    resolve_parallel,
    room_to_gather,
    shard_for_training,
    whole_policy,
)

__all__ = ["PPOConfig", "PPOResult", "ProgressFn", "RewardFn", "rule_reward", "train_ppo"]

RewardFn = Callable[[list[list[dict[str, str]]], list[str]], list[float]]
"""``reward_fn(prompts, completions) -> one score per completion``; prompts are chat message lists."""
ProgressFn = Callable[[int, int, dict[str, float]], None]
"""``progress(step, total_steps, metrics)`` after every PPO step."""


@dataclass(frozen=True)
class PPOResult:
    """``metrics``: summary of the run; ``history``: one dict per step (the keys of ``_step_metrics``)."""

    config: PPOConfig
    out_dir: str
    meta_path: str
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def rule_reward(spec: str) -> RewardFn:
    """A rule-based reward from ``"rule:count:WORD"`` (occurrences of WORD among the
    completion's whitespace-separated words) or ``"rule:length"`` (its word count)."""
    kind, _, arg = spec.removeprefix("rule:").partition(":")
    if kind == "count" and arg:
        return lambda prompts, completions: [float(c.split().count(arg)) for c in completions]
    if kind == "length":
        return lambda prompts, completions: [float(len(c.split())) for c in completions]
    raise ValueError(f"unknown reward rule {spec!r}; use rule:count:WORD or rule:length")


def _reward_from_config(config: PPOConfig, device: Any) -> RewardFn:
    if config.reward.startswith("rule:"):
        return rule_reward(config.reward)
    if not config.reward:
        raise ValueError("config.reward is empty and no reward_fn was passed")
    dtype = resolve_weights_dtype(config.weights, device, stored_dtype(config.reward))
    reward_model = load_reward_model(config.reward, device=device, dtype=dtype)
    return lambda prompts, completions: score(reward_model, prompts, completions, config.reward_batch_size)


def train_ppo(
    config: PPOConfig,
    prompts: Sequence[Sequence[dict[str, str]]],
    out_dir: str | Path,
    progress: ProgressFn | None = None,
    *,
    reward_fn: RewardFn | None = None,
    lineage: dict[str, Any] | None = None,
) -> PPOResult:
    """Run ``config.steps`` PPO steps and publish the policy in ``out_dir``; return the result.

    Preconditions: ``prompts`` is non-empty, each a list of chat messages the
    tokenizer's template accepts; ``out_dir`` does not exist yet (or is an
    empty folder). Prompts are visited in a seeded shuffled order, epoch after
    epoch. ``reward_fn`` wins over ``config.reward``. ``lineage`` (parent
    checkpoint, reward-model version, run id...) is copied into meta.json.
    The folder appears whole or not at all (``training.lib.checkpoint``):
    ``save_pretrained`` files, tokenizer and meta.json.
    """
    out = ensure_free(out_dir)  # fail before the run, not after it
    if not prompts:
        raise ValueError("no prompts")
    team = current_team()
    if config.batch_size % team.size or config.mini_batch_size % team.size:
        raise ValueError(f"batch_size ({config.batch_size}) and mini_batch_size ({config.mini_batch_size}) must be "
                         f"multiples of the number of processes ({team.size}) for a PPO run on several processes")
    started = time.perf_counter()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    parts = _load_parts(config, team)
    reward = reward_fn or _reward_from_config(config, parts.device)
    encoded = [_encode_prompt(parts.tokenizer, p) for p in prompts]
    # Taken before any forward: sharded, these are the shards (a root's forward leaves it gathered).
    policy_params = [p for p in parts.policy.parameters() if p.requires_grad]
    value_params = list(parts.value_head.parameters())
    # Rank 0's starting weights everywhere; sharded weights came from the same files on every rank.
    team.broadcast(value_params if parts.sharded else policy_params + value_params)
    if not team.solo:
        torch.manual_seed(config.seed * 1_000_003 + team.rank)  # each rank samples its own rollouts
    # Each rank's part of a step: its share of the rollouts and of every minibatch.
    local = dataclasses.replace(config, batch_size=config.batch_size // team.size,
                                mini_batch_size=config.mini_batch_size // team.size)
    # eps=1e-5 as in the PPO reference implementations: Adam's default 1e-8 lets tiny second moments blow up steps.
    # Two groups: sharded, the policy's are DTensors and the value head's whole tensors, which one fused
    # kernel call cannot mix (AdamW steps each group on its own; the update is the same either way).
    optimizer = torch.optim.AdamW([{"params": policy_params}, {"params": value_params}], lr=config.learning_rate,
                                  eps=1e-5, weight_decay=0.0, fused=parts.device.type in ("cpu", "cuda"))
    order = _prompt_order(len(prompts), config.batch_size * config.steps, config.seed)
    kl_coef = config.kl_coef
    history: list[dict[str, float]] = []
    loop_start = time.perf_counter()
    for step in range(1, config.steps + 1):
        picked = team.share(order[(step - 1) * config.batch_size : step * config.batch_size])
        batch = _collect(parts, local, [encoded[i] for i in picked])
        raw = reward([list(prompts[i]) for i in picked], batch.texts)
        if len(raw) != len(picked):
            raise ValueError(f"the reward gave {len(raw)} scores for {len(picked)} completions")
        scores = torch.tensor(raw, dtype=torch.float32)
        advantages, returns, kl = _advantages(batch, scores.to(parts.device), kl_coef, config, team)
        update = _ppo_update(parts, local, optimizer, batch, advantages, returns, team)
        observed_kl = team.sum_values({"kl": float(kl.sum(dim=1).sum())}, parts.device)["kl"] / config.batch_size
        entry = _step_metrics(step, batch, scores, observed_kl, kl_coef, update, time.perf_counter() - loop_start)
        entry = _over_ranks(entry, scores, team, parts.device)
        history.append(entry)
        if config.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, observed_kl, config.kl_target, config.kl_horizon, config.batch_size)
        if progress is not None and team.main:
            progress(step, config.steps, entry)
    train_s = time.perf_counter() - loop_start

    metrics = _summary(history, train_s, time.perf_counter() - started - train_s, kl_coef)
    del optimizer  # AdamW state (2x the weights) is freed before the whole weights are gathered and verified
    parts.reference = None
    weights = full_state_dict(parts.policy) if parts.sharded else None  # collective: every rank takes part
    team.barrier()  # every rank has finished its last step: rank 0 alone publishes
    if not team.main:
        return PPOResult(config=config, out_dir="", meta_path="", metrics=metrics, history=history)
    if weights is not None:  # on the CPU: publishing never needs one GPU to hold the whole weights
        parts.policy = whole_policy(parts.model_path, weights, dtype=parts.base_dtype)
    meta = {
        "kind": "ppo",
        "config": config.to_dict(),
        "base_model": config.model,
        "resolved_model": parts.model_path,
        "reward": config.reward if reward_fn is None else f"callable:{getattr(reward_fn, '__name__', 'reward_fn')}",
        "lineage": dict(lineage or {}),
        "metrics": metrics,
        "history": history,
        "precision": {"base": dtype_name(parts.base_dtype), "weights": dtype_name(parts.weights_dtype),
                      "autocast": dtype_name(parts.autocast_dtype) if parts.autocast_dtype is not None else None},
        "parallel": "shard" if parts.sharded else "replicate",  # `config.parallel` as resolved for this run
    }
    meta_path = _save_policy(parts, out, meta)
    return PPOResult(config=config, out_dir=str(out), meta_path=str(meta_path), metrics=metrics, history=history)


def _prompt_order(n_prompts: int, needed: int, seed: int) -> list[int]:
    """Prompt indices for the whole run: seeded shuffles of all prompts, one epoch after another."""
    order: list[int] = []
    epoch = 0
    while len(order) < needed:
        indices = list(range(n_prompts))
        random.Random(seed * 1_000_003 + epoch).shuffle(indices)
        order += indices
        epoch += 1
    return order[:needed]


def _step_metrics(
    step: int, batch: Any, scores: Any, kl: float, kl_coef: float, update: dict[str, float], elapsed: float
) -> dict[str, float]:
    """The per-step log: reward, KL (nats per response), entropy (nats per token), clip fraction,
    value loss, response length (tokens), throughput."""
    lengths = batch.response_mask.sum(dim=1).float()
    return {
        "step": float(step),
        "reward_mean": float(scores.mean()),
        "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
        "kl": kl,
        "kl_coef": kl_coef,
        "objective": float(scores.mean()) - kl_coef * kl,
        "entropy": batch.entropy,
        "response_length": float(lengths.mean()),
        **update,
        "episodes": float(step * len(scores)),
        "elapsed_s": elapsed,
        "episodes_per_s": step * len(scores) / max(elapsed, 1e-9),
    }


def _over_ranks(entry: dict[str, float], scores: Any, team: Team, device: Any) -> dict[str, float]:
    """A step's log over every rank: means of the per-rank figures (equal shares), episodes summed, and the
    reward's mean and spread over all rollouts."""
    if team.solo:
        return entry
    n = float(len(scores))
    summed = team.sum_values({**entry, "_n": n, "_sum": float(scores.sum()),
                              "_sq": float((scores.double() ** 2).sum())}, device)
    total = summed.pop("_n")
    mean = summed.pop("_sum") / total
    spread = max(0.0, summed.pop("_sq") / total - mean * mean) * total / max(1.0, total - 1)
    out = {key: value / team.size for key, value in summed.items()}
    out.update({"reward_mean": mean, "reward_std": spread ** 0.5,
                "objective": mean - entry["kl_coef"] * entry["kl"], "episodes": summed["episodes"],
                "episodes_per_s": summed["episodes_per_s"], "kl": entry["kl"], "kl_coef": entry["kl_coef"],
                "step": entry["step"]})
    return out


def _summary(history: list[dict[str, float]], train_s: float, setup_s: float, kl_coef: float) -> dict[str, float]:
    first, last = history[: max(1, len(history) // 4)], history[-max(1, len(history) // 4) :]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    return {
        "steps": float(len(history)),
        "episodes": history[-1]["episodes"],
        "train_seconds": train_s,
        "setup_seconds": setup_s,
        "episodes_per_s": history[-1]["episodes"] / max(train_s, 1e-9),
        "reward_first_quarter": mean(first, "reward_mean"),
        "reward_last_quarter": mean(last, "reward_mean"),
        "kl_last_quarter": mean(last, "kl"),
        "final_kl_coef": kl_coef,
    }


# --- models, rollouts, updates -------------------------------------------------------------------------------------


@dataclass
class _Parts:
    """The live objects of a run (mutable: they train). ``reference`` is None with LoRA
    (the policy with its adapters switched off is the reference then). ``sharded``: the policy and
    the reference are `ShardedPolicy` roots (`training.lib.sharding`)."""

    tokenizer: Any
    policy: Any
    value_head: Any
    reference: Any
    device: Any
    autocast_dtype: Any
    eos_ids: list[int]
    model_path: str
    base_dtype: Any
    weights_dtype: Any
    sharded: bool = False
    team: Team = SOLO

    def autocast(self) -> Any:
        """Autocast (if any) plus the attention kernels every forward pass of ours uses."""
        return forward_context(self.device, self.autocast_dtype)

    def reference_logprobs(self, ids: Any, mask: Any, prompt_width: int, temperature: float) -> Any:
        if self.reference is not None:
            return _forward(self.reference, None, ids, mask, prompt_width, temperature)[0]
        with self.policy.disable_adapter():
            return _forward(self.policy, None, ids, mask, prompt_width, temperature)[0]


@dataclass(frozen=True)
class _Rollouts:
    """One batch of B sampled responses after a prompt block of width P (left padded).

    input_ids, attention_mask [B, P + R]; response_mask, logprobs, ref_logprobs,
    values [B, R] (float; values are V(state before each response token));
    ``entropy``: mean per-token entropy of the sampling distribution, nats.
    """

    input_ids: Any
    attention_mask: Any
    prompt_width: int
    response_mask: Any
    logprobs: Any
    ref_logprobs: Any
    values: Any
    entropy: float
    texts: list[str]


def _load_parts(config: PPOConfig, team: Team = SOLO) -> _Parts:
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if config.device == "auto" else config.device)
    # "auto" -> full/lora/qlora (costed for this rank's share, sharded or not); refuses qlora off CUDA
    config = resolve_run_mode(config, kind="ppo", device=device, ranks=team.size)
    sharded = resolve_parallel(config.parallel, config.mode, team) == "shard"
    if device.type != "cuda" and config.dtype == "bf16":
        raise ValueError("dtype='bf16' is refused off CUDA: CPUs here have no bf16 units (~100x slower than fp32)")
    path = resolve_model(config.model)
    base_dtype = stored_dtype(path)
    weights = resolve_weights_dtype(config.weights, device, base_dtype)
    # Autocast only over fp32 weights (fp32 master weights); bf16 weights compute in bf16 already.
    use_bf16 = (device.type == "cuda" and config.dtype != "fp32" and torch.cuda.is_bf16_supported()
                and weights == torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # masked out everywhere, so any id works
    if not tokenizer.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat template")
    # AdamW keeps its state in the weights' dtype; over fp32 weights bf16 enters only through autocast.
    loading = quantized_load_options(device) if config.mode == "qlora" else {"dtype": weights}
    policy: Any = AutoModelForCausalLM.from_pretrained(path, **loading)
    # Sharded: left on the CPU, each layer moves to the device as its shard (one layer whole at a time).
    policy.to(torch.device("cpu") if sharded else device)
    policy.eval()  # dropout off for good: it would make the PPO ratio noisy; gradients still flow
    if config.gradient_checkpointing:
        # transformers recomputes layers only in train mode: `_ppo_update` switches to it, with dropout at 0.
        for module in policy.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference: Any = None  # LoRA: the policy with its adapters switched off
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # LoRA runs only: slow import

        if config.mode == "qlora":  # freezes the 4-bit base, keeps norms and embeddings in fp32
            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=config.gradient_checkpointing,
                                                     gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        policy = get_peft_model(policy, lora)
    hidden = policy.config.get_text_config().hidden_size
    eos_ids = eos_token_ids(tokenizer, policy)
    autocast = torch.bfloat16 if use_bf16 else None
    if sharded:  # the frozen copy is taken while the weights are whole, then sharded beside the policy
        policy, reference = shard_for_training(policy, device, mixed=autocast, frozen_copy=True)
    elif config.lora_r == 0:
        reference = copy.deepcopy(policy).requires_grad_(False)
    value_head = torch.nn.Linear(hidden, 1).to(device)  # fp32 whatever the weights: 1 x hidden parameters
    torch.nn.init.zeros_(value_head.weight)  # V starts at 0: early advantages are the plain returns
    torch.nn.init.zeros_(value_head.bias)
    return _Parts(tokenizer, policy, value_head, reference, device, autocast, eos_ids, path, base_dtype, weights,
                  sharded, team)


def _encode_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    return list(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def _forward(model: Any, value_head: Any, ids: Any, mask: Any, prompt_width: int, temperature: float) -> tuple:
    """(logprobs [B, R], values [B, R] or None, logits [B, R, V] / temperature) of the response tokens.

    ids, mask [B, P + R] with P = prompt_width >= 1. Only the R + 1 last
    positions go through the LM head (``logits_to_keep``): prompt tokens
    never pay for a vocabulary projection.
    """
    width = ids.shape[1] - prompt_width
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                output_hidden_states=value_head is not None, logits_to_keep=width + 1)
    logits = out.logits[:, :-1].float() / temperature  # position P-1+t predicts response token t
    targets = ids[:, prompt_width:]
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, prompt_width - 1 : -1]
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    return logprobs, values, logits


def _sample(parts: _Parts, config: PPOConfig, prompt_ids: list[list[int]]) -> tuple:
    """(input_ids [B, P + R], attention_mask [B, P + R], P, response_mask [B, R] float)."""
    pad = parts.tokenizer.pad_token_id
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompt_ids):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(parts.device), mask.to(parts.device)
    # no_grad, not inference_mode: these ids feed the differentiable forward passes later.
    # Sharded: the whole policy gathered once for all the new tokens where every rank has room for it.
    gather = {"gather": config.gather_for_sampling and room_to_gather(
        parts.policy, parts.device, parts.team, _kv_cache_bytes(parts, len(prompt_ids), width + config.max_new_tokens),
    )} if parts.sharded else {}
    with torch.no_grad(), parts.autocast():
        out = parts.policy.generate(**gather, input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                                    temperature=config.temperature, top_p=config.top_p,
                                    max_new_tokens=config.max_new_tokens, eos_token_id=parts.eos_ids,
                                    pad_token_id=pad)
    response = out[:, width:]
    is_eos = torch.isin(response, torch.tensor(parts.eos_ids, device=response.device)).long()
    response_mask = ((is_eos.cumsum(dim=1) - is_eos) == 0).float()  # up to and including the first EOS
    return out, torch.cat([mask, response_mask.long()], dim=1), width, response_mask


def _kv_cache_bytes(parts: _Parts, sequences: int, tokens: int) -> float:
    """What sampling `sequences` of up to `tokens` tokens holds in its KV cache (the compute dtype's bytes)."""
    config = parts.policy.inner.config.get_text_config()  # sharded: the `ShardedPolicy` root's inner model
    layers, kv_heads = config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = (parts.autocast_dtype or parts.weights_dtype).itemsize
    return 2.0 * itemsize * layers * kv_heads * head_dim * sequences * tokens


def _trim(batch: _Rollouts, rows: Any) -> tuple[Any, Any, int, int]:
    """(ids, mask, P', R') for ``rows``, cut to the columns any of them uses: less padding to compute."""
    mask = batch.attention_mask[rows]
    used_prompt = mask[:, : batch.prompt_width].sum(dim=0).nonzero()
    start = int(used_prompt.min()) if len(used_prompt) else batch.prompt_width - 1
    width = max(1, int(batch.response_mask[rows].sum(dim=1).max()))
    end = batch.prompt_width + width
    return batch.input_ids[rows, start:end], mask[:, start:end], batch.prompt_width - start, width


def _collect(parts: _Parts, config: PPOConfig, prompt_ids: list[list[int]]) -> _Rollouts:
    """Sample B responses, then (no grad) their log-probs, values, reference log-probs and entropy."""
    ids, mask, prompt_width, response_mask = _sample(parts, config, prompt_ids)
    n, width = response_mask.shape
    logprobs, ref_logprobs, values = (torch.zeros(n, width, device=parts.device) for _ in range(3))
    entropy_sum = 0.0
    shell = _Rollouts(ids, mask, prompt_width, response_mask, None, None, None, 0.0, [])
    with torch.no_grad(), parts.autocast():
        for rows in torch.arange(n, device=parts.device).split(config.mini_batch_size):
            sub_ids, sub_mask, sub_p, sub_r = _trim(shell, rows)
            lp, v, logits = _forward(parts.policy, parts.value_head, sub_ids, sub_mask, sub_p, config.temperature)
            logprobs[rows, :sub_r], values[rows, :sub_r] = lp, v
            ref_logprobs[rows, :sub_r] = parts.reference_logprobs(sub_ids, sub_mask, sub_p, config.temperature)
            entropy_sum += float((token_entropy(logits) * response_mask[rows, :sub_r]).sum())
    texts = []
    for row in range(n):
        length = int(response_mask[row].sum())
        texts.append(parts.tokenizer.decode(ids[row, prompt_width : prompt_width + length].tolist(),
                                            skip_special_tokens=True).strip())
    entropy = entropy_sum / max(1.0, float(response_mask.sum()))
    reshard(parts.policy, parts.reference)  # sharded: the roots' no-grad forwards left them gathered
    return dataclasses.replace(shell, logprobs=logprobs, ref_logprobs=ref_logprobs, values=values,
                               entropy=entropy, texts=texts)


def _advantages(batch: _Rollouts, scores: Any, kl_coef: float, config: PPOConfig,
                team: Team = SOLO) -> tuple[Any, Any, Any]:
    """(advantages, returns, per-token KL), each [B, R]; advantages whitened (over every rank's rollouts) if
    configured."""
    rewards, kl = kl_penalized_rewards(scores, batch.logprobs, batch.ref_logprobs, batch.response_mask, kl_coef)
    advantages, returns = gae(rewards, batch.values, batch.response_mask, config.gamma, config.lam)
    if config.whiten_advantages and team.solo:
        advantages = masked_whiten(advantages, batch.response_mask)
    elif config.whiten_advantages:
        mask = batch.response_mask
        sums = team.sum_values({"n": float(mask.sum()), "sum": float((advantages * mask).sum()),
                                "sq": float((advantages.double() ** 2 * mask).sum())}, advantages.device)
        mean = sums["sum"] / max(sums["n"], 1.0)
        var = max(0.0, sums["sq"] / max(sums["n"], 1.0) - mean * mean)
        advantages = (advantages - mean) * (var + 1e-8) ** -0.5 * mask
    return advantages, returns, kl


def _ppo_update(parts: _Parts, config: PPOConfig, optimizer: Any, batch: _Rollouts, advantages: Any,
                returns: Any, team: Team = SOLO) -> dict[str, float]:
    """``ppo_epochs`` shuffled passes of minibatch steps; returns the mean of each loss statistic.

    On several ranks each minibatch step averages the ranks' gradients (each rank's loss is its own
    minibatch's mean), as DDP does: sharded, FSDP sums the policy's in the backward pass and the
    value head's are summed here. Every rank runs as many minibatches (equal shares, see `train_ppo`)."""
    policy_params, value_params = (group["params"] for group in optimizer.param_groups)
    sums: dict[str, float] = {}
    count = 0
    if config.gradient_checkpointing:
        parts.policy.train()  # dropout is 0 (see `_load_parts`); sampling and scoring stay in eval mode
    for _ in range(config.ppo_epochs):
        order = torch.randperm(len(batch.texts), device=parts.device)
        for rows in order.split(config.mini_batch_size):
            ids, mask, prompt_width, width = _trim(batch, rows)
            with parts.autocast():
                logprobs, values, _ = _forward(parts.policy, parts.value_head, ids, mask, prompt_width,
                                               config.temperature)
            response_mask = batch.response_mask[rows, :width]
            policy = clipped_policy_loss(logprobs, batch.logprobs[rows, :width], advantages[rows, :width],
                                         response_mask, config.clip_range)
            value = clipped_value_loss(values, batch.values[rows, :width], returns[rows, :width], response_mask,
                                       config.clip_range_value)
            loss = policy.loss + config.vf_coef * value.loss
            optimizer.zero_grad(set_to_none=True)
            (loss / team.size).backward()
            team.sum_gradients(value_params if parts.sharded else policy_params + value_params)
            if parts.sharded:  # shards and whole tensors: one joint norm
                grad_norm = clip_grad_norm([policy_params, value_params], config.max_grad_norm)
            else:  # torch's own, as before sharding existed: replicas take exactly the steps they took
                grad_norm = torch.nn.utils.clip_grad_norm_(policy_params + value_params, config.max_grad_norm)
            optimizer.step()
            stats = {"policy_loss": policy.loss, "value_loss": value.loss, "clip_fraction": policy.clip_fraction,
                     "approx_kl": policy.approx_kl, "value_clip_fraction": value.clip_fraction,
                     "grad_norm": grad_norm}
            for key, tensor in stats.items():
                sums[key] = sums.get(key, 0.0) + float(tensor.detach())
            count += 1
    parts.policy.eval()
    return {key: total / count for key, total in sums.items()}


def _save_policy(parts: _Parts, out: Path, meta: dict[str, Any]) -> Path:
    """Publish the policy (LoRA merged, in the base model's dtype) atomically through ``checkpoint.save_checkpoint``;
    returns meta.json's path.

    The folder is checked before it is renamed into place: it must load back
    with exactly the weights as saved.
    """
    save_checkpoint(parts.policy, parts.tokenizer, out, meta, dtype=parts.base_dtype, verify=_verify_saved)
    return out / META_FILE


def _verify_saved(folder: Path, model: Any) -> None:
    """Raise unless ``folder`` loads (model and tokenizer) with exactly the weights of ``model``, in their dtype."""
    AutoTokenizer.from_pretrained(folder)
    live = model.state_dict()
    dtype = next(t.dtype for t in live.values() if t.is_floating_point())
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).state_dict()
    if set(loaded) != set(live):
        raise RuntimeError(f"saved policy in {folder} has different tensors: {sorted(set(loaded) ^ set(live))[:5]}")
    for name, tensor in live.items():
        if loaded[name].dtype != tensor.dtype or not torch.equal(loaded[name], tensor.detach().cpu()):
            raise RuntimeError(f"saved policy in {folder} differs from the trained one at {name}")
