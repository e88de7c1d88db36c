"""A reward model's weights, gradients and AdamW state sharded over the ranks of one node (FSDP2).

`shard_reward_model` wraps a `RewardModel` for full fine-tuning under torchrun with
`torch.distributed.fsdp.fully_shard`, as `training.lib.sharding.shard_policy` does a policy: each
decoder layer of the backbone is its own unit, the heads another (fp32 beside a bf16 backbone:
one unit reduces gradients of one dtype), and the root unit is the `RewardModel` itself, so its
hooks see every forward (backbone, pooling and heads run inside `RewardModel.forward`). The
learned tie parameter is a scalar, which FSDP cannot shard: it stays whole on every rank (ignored
by FSDP), and its gradient is summed over the ranks once per optimizer step
(`finish_gradients`), as a replica's is.

Contracts the caller keeps (`rewardmodel.lib.train`), those of `training.lib.sharding`:

* every forward and backward all-gathers, so every rank runs the same number of micro-batches,
  in the same order: a rank whose share of a batch is empty runs the batch's first pair and
  multiplies its loss by 0;
* the losses are scaled so that the SUM of the ranks' gradients is the gradient of the global
  batch (their pairs, or bootstrap weight, over the batch's); FSDP sums, never averages;
* `finish_gradients` is collective (the norm of every shard); `gather_weights` too: every rank
  calls it, rank 0 gets the whole weights on the CPU, the others an empty dict.

Numbers are checked against one process in tests/rewardmodel/test_reward_fsdp.py (CPU, gloo).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.model import RewardModel, build_reward_model
from rewardmodel.lib.ranks import Team
from training.lib.sharding import clip_grad_norm, decoder_layers, resolve_parallel

__all__ = ["finish_gradients", "gather_weights", "resolve_parallel", "shard_reward_model", "sharded_runs",
           "whole_reward_model"]


def shard_reward_model(model: RewardModel, device: torch.device, team: Team) -> RewardModel:
    """`model` (full fine-tuning, any device) sharded over every rank of the process group onto `device`.

    Returns the same object, now an FSDP module: its parameters are the DTensor shards (the tie
    parameter excepted). The heads and tie parameter start as rank 0's (equal already when every
    rank seeded alike). The BERT final-layer shortcut is switched off: it calls the last layer's
    parts directly, bypassing that layer's unit, whose weights would then still be shards.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    model.final_layer_shortcut = False
    model.head.to(device)
    model.tie_param.data = model.tie_param.data.to(device)
    team.broadcast([model.head.weight, model.tie_param])
    mesh = init_device_mesh(device.type, (team.size,))
    for layer in decoder_layers(model.backbone):
        fully_shard(layer, mesh=mesh)
    fully_shard(model.head, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params={model.tie_param})
    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            # The losses are scaled so that the ranks' gradients SUM to the batch's: no averaging.
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    return model


def _is_shard(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def finish_gradients(params: Iterable[torch.nn.Parameter], team: Team, max_norm: float) -> torch.Tensor:
    """End a sharded model's optimizer step's backward: sum the whole parameters' gradients (the
    tie parameter's) over the ranks, clip every gradient to a global norm of `max_norm` as
    `torch.nn.utils.clip_grad_norm_` would on one process, and return that norm (a plain tensor).

    Collective. FSDP's reduce-scatter already summed the shards' gradients at each backward.
    """
    params = [p for p in params if p.requires_grad]
    whole = [p for p in params if not _is_shard(p)]
    team.sum_gradients(whole)
    return clip_grad_norm([[p for p in params if _is_shard(p)], whole], max_norm)


def gather_weights(model: RewardModel) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the CPU on rank 0 ({} elsewhere). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def whole_reward_model(config: RewardConfig, weights: Mapping[str, torch.Tensor], *, like: RewardModel,
                       device: torch.device) -> RewardModel:
    """An unsharded reward model on `device` holding `weights` (`gather_weights`'s), in the dtypes a
    run on `device` trains in, with `like`'s token layout (`flat_tokens`), for rank 0 to evaluate and save."""
    model = build_reward_model(config, device=device, load_device=torch.device("cpu"))
    model.load_state_dict(weights)
    model.flat_tokens = like.flat_tokens
    model.tie_param.requires_grad_(False)
    return model.to(device).eval()


def sharded_runs(batches: Iterable[list[int]], shares: Iterable[list[int]]) -> list[list[int]]:
    """What a sharded rank runs for each batch: its share, or the batch's first pair where the share
    is empty (its loss then counts 0; every forward of a sharded model is collective)."""
    return [share or idx[:1] for idx, share in zip(batches, shares, strict=True)]

