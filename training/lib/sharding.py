"""A policy's weights, gradients and AdamW state sharded over the ranks of one node (FSDP2).

`shard_policy` wraps a causal LM for full fine-tuning under torchrun with
`torch.distributed.fsdp.fully_shard`: each decoder layer is its own unit (its
weights all-gathered just before it runs, freed after), the root unit holds
what is left (embeddings, final norm, LM head; tied weights stay one
parameter). Every rank then keeps 1/N of each weight, its gradient and the
optimizer's moments, as DTensor shards.

Every use of the model goes through the root's forward, so the root unit's
hooks gather its weights for each: `ShardedPolicy(tokens)` is `token_logprobs`
on the inner model (which calls the decoder and the head separately: only
scored tokens reach the head, which would bypass a root wrapped around the
causal LM itself); `ShardedPolicy(**model_kwargs)` is the causal LM's own
forward; `ShardedPolicy.generate(**kwargs)` runs the inner model's `generate`
inside one root forward (the first forward must be the root's: FSDP makes the
first unit to run forward its root).

Contracts the callers keep (`training.lib.dpo`, `training.lib.ppo`):

* every forward and backward all-gathers, so every rank runs the same number
  of them, in the same order: a rank with nothing to do runs a dummy batch
  and drops its result (its loss multiplied by 0); `generate` samples with
  ``synced_gpus=True``, so a rank whose rows have ended keeps running the
  model (sampling nothing) until every rank's have;
* the losses are already scaled so that the SUM of the ranks' gradients is
  the gradient of the global batch; gradients are summed, not averaged
  (divide factor 1, sum-only reductions);
* the root unit stays gathered after its forward (FSDP's default for a
  root: its backward comes next); after no-grad forwards (a reference pass,
  sampling) the caller calls `reshard` before taking ``parameters()``, which
  would otherwise hand the optimizer the gathered tensors, not the shards,
  and before an optimizer step, after which a root left gathered would compute
  with the old weights;
* `torch.nn.utils.clip_grad_norm_` over the shards returns the global norm as
  a replicated DTensor (`clip_grad_norm` clips shards and whole tensors by one
  joint norm); fused AdamW steps the shards as it steps whole tensors;
* `full_state_dict` is collective: every rank calls it; rank 0 gets the
  weights, on the CPU, the others an empty dict.

Numbers and FSDP choices are checked against one process in tests/training/test_fsdp.py (CPU, gloo), and
sharded PPO against replicated PPO in tests/training/test_ppo_fsdp.py.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from rewardmodel.lib.ranks import Team
from training.lib.logprobs import ScoredTokens, token_logprobs

__all__ = ["ShardedPolicy", "clip_grad_norm", "decoder_layers", "full_state_dict", "reshard", "resolve_parallel",
           "room_to_gather", "scored_logprobs", "shard_for_training", "shard_policy", "whole_policy"]


def resolve_parallel(parallel: str, mode: str, team: Team) -> str:
    """"shard" or "replicate": the rule of `DPOConfig.parallel` for a run whose `mode` is resolved.

    Raises ValueError where "shard" was asked of LoRA or QLoRA (mode "auto" may resolve to them).
    """
    if team.solo or parallel == "replicate":
        return "replicate"
    if mode != "full":
        if parallel == "shard":
            raise ValueError(f"parallel='shard' shards full fine-tuning only; this run resolved to mode {mode!r}")
        return "replicate"
    return "shard"


class ShardedPolicy(torch.nn.Module):
    """The root FSDP unit around a causal LM; every use of the inner model is one forward of this root.

    ``forward(tokens)``: `token_logprobs(inner, tokens)` ([M] fp32); ``forward(**model_kwargs)``: the causal
    LM's output; ``generate(**kwargs)``: the inner model's `generate`.
    """

    def __init__(self, inner: Any, gathered_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.gathered_dtype = gathered_dtype  # what the shards all-gather in (None: their own dtype)

    def forward(self, tokens: ScoredTokens | None = None, *, generate: bool = False, gather: bool = False,
                **kwargs: Any) -> Any:
        if tokens is not None:
            return token_logprobs(self.inner, tokens)
        if not generate:
            return self.inner(**kwargs)
        from torch.distributed.fsdp import FSDPModule

        # Inside the root's forward (after its lazy initialisation): the layers keep what they gather.
        layers = [m for m in self.inner.modules() if isinstance(m, FSDPModule)] if gather else []
        for layer in layers:
            layer.set_reshard_after_forward(False, recurse=False)
        try:
            return self.inner.generate(**kwargs)
        finally:
            for layer in layers:
                layer.reshard()
                layer.set_reshard_after_forward(True, recurse=False)

    def generate(self, *, gather: bool = False, **kwargs: Any) -> torch.Tensor:
        """`inner.generate(**kwargs)` inside one root forward, with ``synced_gpus=True``. Collective: every
        rank passes the same `gather` (`room_to_gather` agrees it).

        The root's hooks gather the embeddings, final norm and LM head once for the whole of it. Each
        decoder layer is gathered at the first new token and kept whole until the end where `gather`
        (the whole policy in its compute dtype on every rank for the time of sampling, as TRL's
        ``ds3_gather_for_generation``), else gathered at every new token and freed after (one
        layer's all-gather per layer per token: the lean, slow way).
        """
        return self(generate=True, gather=gather, **{**kwargs, "synced_gpus": True})


def room_to_gather(model: ShardedPolicy, device: torch.device, team: Team, reserve_bytes: float) -> bool:
    """Whether every rank has room to hold `model`'s whole weights for sampling besides `reserve_bytes`
    (the sampling's KV cache): its free CUDA memory, agreed over the ranks (any rank short: none gathers).
    Off CUDA (host memory; the tests' gloo runs) there is room."""
    short = 0
    if device.type == "cuda":
        dtype = model.gathered_dtype
        whole = sum(p.numel() * (dtype or p.dtype).itemsize for p in model.parameters())  # a DTensor's numel is global
        # Free on the card plus what torch's caching allocator holds but no tensor uses.
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        short = int(free < 1.1 * whole + reserve_bytes)
    return team.most(short, device) == 0


def scored_logprobs(model: Any, tokens: ScoredTokens) -> torch.Tensor:
    """log πθ of the scored tokens [M], through the root unit when `model` is sharded."""
    return model(tokens) if isinstance(model, ShardedPolicy) else token_logprobs(model, tokens)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model: the modules whose class the model names in
    ``_no_split_modules`` (LlamaDecoderLayer, Qwen2DecoderLayer, ...), else the longest ModuleList."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard_policy(model: Any, device: torch.device, *, mixed: torch.dtype | None = None) -> ShardedPolicy:
    """`model` (full fine-tuning, any device) sharded over every rank of the process group onto `device`.

    `mixed`: bf16 compute over fp32 weights (all-gathered in bf16, gradients reduced in fp32), as
    `resolve_autocast` chose for the replicated path; None: the weights' own dtype.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    # Inputs keep their dtype (the float attention masks among them); autocast decides each op's.
    policy = MixedPrecisionPolicy(param_dtype=mixed, reduce_dtype=torch.float32 if mixed else None,
                                  cast_forward_inputs=False)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=True)  # `generate(gather=True)`
    root = fully_shard(ShardedPolicy(model, mixed), mesh=mesh, mp_policy=policy)
    for unit in root.modules():
        if isinstance(unit, FSDPModule):
            # The losses are scaled so that the ranks' gradients SUM to the batch's: no averaging.
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    return root


def shard_for_training(model: Any, device: torch.device, *, mixed: torch.dtype | None,
                       frozen_copy: bool) -> tuple[ShardedPolicy, ShardedPolicy | None]:
    """(sharded policy, sharded frozen reference copy if `frozen_copy`, else None); the copy is taken
    before sharding, when the weights are still whole tensors."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False) if frozen_copy else None
    return shard_policy(model, device, mixed=mixed), (shard_policy(frozen, device, mixed=mixed) if frozen else None)


def whole_policy(model_path: str, weights: dict[str, torch.Tensor], *, dtype: torch.dtype) -> Any:
    """An unsharded causal LM on the CPU in `dtype` holding `weights` (`full_state_dict`'s), to publish."""
    from training.lib.checkpoint import load_policy

    model = load_policy(model_path, "cpu", dtype=dtype)[0]
    model.load_state_dict(weights)  # copies, cast to `dtype` as a checkpoint's save would cast them
    return model


def reshard(*models: Any) -> None:
    """Free the gathered weights of each sharded root among `models` (no-op for anything else)."""
    for model in models:
        if isinstance(model, ShardedPolicy):
            model.reshard()  # type: ignore[attr-defined]  (FSDPModule's)


def clip_grad_norm(groups: Sequence[Sequence[torch.nn.Parameter]], max_norm: float) -> torch.Tensor:
    """Scale the gradients of every group so that their joint L2 norm is at most `max_norm`; return that
    norm before scaling (a plain scalar tensor), as `torch.nn.utils.clip_grad_norm_` would over one list.

    A group holds FSDP shards (DTensors: their norm is over every rank's shards, a collective) or whole
    tensors, never both: torch's norm and scaling take one kind at a time.
    """
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        norms = []
        for group in groups:
            grads = [p.grad for p in group if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads)
                norms.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float().cpu())
        total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)
        coef = min(1.0, max_norm / (float(total) + 1e-6))  # torch's rule; a float scales DTensors and tensors alike
        if coef < 1.0:
            for group in groups:
                for p in group:
                    if p.grad is not None:
                        p.grad.mul_(coef)
    return total


def full_state_dict(model: ShardedPolicy) -> dict[str, torch.Tensor]:
    """The inner model's whole weights on the CPU on rank 0 ({} elsewhere). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {key.removeprefix("inner."): value for key, value in state.items()}
