"""The PPO run's configuration: a frozen dataclass that validates itself.

Kept apart from `training.lib.ppo` so that checking a configuration (in a web
process, before a run is queued) imports neither torch nor transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rewardmodel.lib.config import (
    MODE_SETTINGS,
    PARALLEL_SETTINGS,
    WEIGHTS_SETTINGS,
    ConfigBase,
    Mode,
    Parallel,
    Weights,
)

__all__ = ["DEFAULT_LORA_R", "PPOConfig"]

#: The adapters' rank when ``mode`` asks for adapters and ``lora_r`` is 0.
DEFAULT_LORA_R = 16


@dataclass(frozen=True)
class PPOConfig(ConfigBase):
    """Everything that decides a PPO run.

    ``model``: what ``resolve_model`` accepts (alias, folder, hub id); its
    tokenizer needs a chat template. ``reward``: a reward-model folder written
    by ``rewardmodel.lib`` or ``"rule:count:WORD"`` / ``"rule:length"``; may be
    empty when ``train_ppo`` gets a ``reward_fn``. ``batch_size`` rollouts per
    step, updated in minibatches of ``mini_batch_size`` for ``ppo_epochs``
    passes. ``adaptive_kl`` turns on the proportional controller that steers
    the per-response KL towards ``kl_target`` nats over ``kl_horizon``
    rollouts. ``mode``: ``"full"`` trains every weight; ``"lora"`` trains LoRA
    adapters of rank ``lora_r`` on all linear layers instead (the saved policy
    has them merged); ``"qlora"`` the same over a 4-bit NF4 base (CUDA and
    bitsandbytes only, refused elsewhere before anything loads; merged into the
    base reloaded in its own dtype at save); ``"auto"`` = ``"full"`` off CUDA,
    and on a GPU the first of full, LoRA, QLoRA that ``training.lib.memory``
    says fits its free memory (``training.lib.modes``). ``lora_r > 0`` is the
    older spelling of ``mode="lora"``: it turns ``"auto"`` into ``"lora"``
    (and contradicts ``"full"``); the adapter modes with ``lora_r=0`` take rank
    16. ``dtype="auto"`` means
    bf16 autocast on CUDA and plain fp32 elsewhere, where the weights are fp32.
    ``weights``: the dtype the policy (and its reference, and a reward-model
    folder's backbone) load and train in; the saved policy is in the base
    model's own dtype either way (see ``rewardmodel.lib.precision``). ``"auto"``
    = the base's stored dtype (bf16 weights and AdamW state, no autocast) on a
    CUDA GPU with bf16, fp32 elsewhere; ``"fp32"`` = fp32 weights and AdamW
    state (fp32 master weights) with ``dtype``'s autocast, as before the setting
    existed; ``"checkpoint"`` = the stored dtype on any device. The value head
    and LoRA adapters stay fp32. ``gradient_checkpointing`` recomputes each
    layer's activations in the backward pass of the updates instead of keeping
    them (less memory, about a third more compute; sampling is unaffected).
    Log-probabilities and the KL are those of the temperature-scaled
    distribution; ``top_p < 1`` samples from a truncated one that the PPO
    ratio does not see (as in most implementations), so keep 1.0 unless you
    mean it.

    ``parallel``: how several ranks under torchrun (`training.lib.distributed`)
    hold the policy. ``"replicate"`` = each rank a whole policy, value head,
    reference copy and reward model, gradients summed at every minibatch;
    ``"shard"`` = FSDP2 (`training.lib.sharding`): each rank holds 1/N of the
    policy's weights, gradients and AdamW moments and 1/N of the reference
    copy (the value head and the reward model stay whole on every rank);
    full fine-tuning only. ``"auto"`` = ``"shard"`` when several ranks run full
    fine-tuning, ``"replicate"`` for LoRA and QLoRA and for one process, the
    rule of `DPOConfig.parallel`. ``gather_for_sampling`` (sharded only): gather
    the whole policy, in its compute dtype, once for all the new tokens of a
    rollout batch where every rank's GPU has room for it besides the batch's KV
    cache (checked before each batch; as TRL's ``ds3_gather_for_generation``),
    else, or when False, gather each decoder layer at every new token and free
    it after (lean, and slower by one all-gather per layer per token).
    """

    model: str
    reward: str = ""
    learning_rate: float = 1e-5
    batch_size: int = 16
    mini_batch_size: int = 4
    ppo_epochs: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    kl_coef: float = 0.05
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10_000
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    max_grad_norm: float = 1.0
    steps: int = 100
    seed: int = 0
    device: str = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    weights: Weights = "fp32"  # bf16 weights round away small updates; "auto" opts in
    gradient_checkpointing: bool = False
    mode: Mode = "auto"
    parallel: Parallel = "auto"
    gather_for_sampling: bool = True
    lora_r: int = 0
    lora_alpha: int = 16
    reward_batch_size: int = 32
    num_threads: int = 0  # 0 = leave torch's default

    def __post_init__(self) -> None:
        checks = {
            "batch_size must be >= 1": self.batch_size >= 1,
            "mini_batch_size must be in [1, batch_size]": 1 <= self.mini_batch_size <= self.batch_size,
            "ppo_epochs, steps, max_new_tokens must be >= 1": min(self.ppo_epochs, self.steps,
                                                                  self.max_new_tokens) >= 1,
            "temperature must be > 0 (PPO needs the sampling distribution)": self.temperature > 0,
            "top_p must be in (0, 1]": 0 < self.top_p <= 1,
            "gamma and lam must be in [0, 1]": 0 <= self.gamma <= 1 and 0 <= self.lam <= 1,
            "kl_target and kl_horizon must be > 0": self.kl_target > 0 and self.kl_horizon > 0,
            "lora_r must be >= 0": self.lora_r >= 0,
            f"unknown dtype {self.dtype!r}": self.dtype in ("auto", "fp32", "bf16"),
            f"weights must be one of {WEIGHTS_SETTINGS}, not {self.weights!r}": self.weights in WEIGHTS_SETTINGS,
            f"mode must be one of {MODE_SETTINGS}, not {self.mode!r}": self.mode in MODE_SETTINGS,
            "lora_r > 0 contradicts mode='full'": not (self.lora_r > 0 and self.mode == "full"),
            f"parallel must be one of {PARALLEL_SETTINGS}, not {self.parallel!r}": self.parallel in PARALLEL_SETTINGS,
            "parallel='shard' shards full fine-tuning only, not LoRA or QLoRA":
                not (self.parallel == "shard" and (self.lora_r > 0 or self.mode in ("lora", "qlora"))),
        }
        self._require(checks)
        # `lora_r` and `mode` say the same thing twice; keep them in step (the config stays frozen to callers).
        if self.lora_r > 0 and self.mode == "auto":
            object.__setattr__(self, "mode", "lora")
        if self.mode in ("lora", "qlora") and self.lora_r == 0:
            object.__setattr__(self, "lora_r", DEFAULT_LORA_R)
