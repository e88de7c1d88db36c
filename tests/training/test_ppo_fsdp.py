"""Sharded PPO (FSDP2) under torchrun: two CPU processes (gloo), against the replicated run of the same seed.

Sampling is seeded per rank, so a sharded run and a replicated one draw the same rollouts from the same
weights: their steps must agree to rounding. The toy task is tests/training/test_ppo.py's.
"""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rewardmodel.lib.ranks import Team
from tests.tiny import safetensors_dtypes, save_tiny_llama, save_tiny_llama_bf16
from tests.training.test_distributed import _launch, assert_two_rank_ppo_learned
from tests.training.test_ppo import PROMPTS, _toy_config
from training.lib.ppo_config import PPOConfig

pytestmark = pytest.mark.timeout(300)

TOLERANCE = 1e-5  # fp32 on the CPU; the comparison prints the largest differences it saw
#: Figures a step logs that depend on the machine's speed, not on the numbers.
TIMINGS = ("elapsed_s", "episodes_per_s")


def _prompts(tmp_path: Path) -> Path:
    data = tmp_path / "prompts.json"
    data.write_text(json.dumps(PROMPTS))
    return data


def test_a_sharded_run_learns_the_toy_reward_and_publishes_one_whole_checkpoint(tmp_path: Path) -> None:
    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    config = _toy_config(policy, parallel="shard")
    result, steps, _ = _launch("ppo", config, _prompts(tmp_path), tmp_path / "out", tmp_path / "job")
    assert_two_rank_ppo_learned(steps)  # the bar of the replicated runs
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # the first rollouts come from the reference
    # Rank 0 alone published, once: an ordinary checkpoint of whole weights in the base's dtype.
    out = tmp_path / "out"
    assert result["out"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job", "out", "policy", "prompts.json"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["parallel"] == "shard" and meta["config"]["parallel"] == "shard" and meta["lineage"] == {"run": 7}
    assert meta["dtype"] == "float32" and safetensors_dtypes(out) == {"F32"}
    loaded = AutoModelForCausalLM.from_pretrained(out)
    start_weights = AutoModelForCausalLM.from_pretrained(policy).state_dict()
    assert loaded.state_dict().keys() == start_weights.keys()
    assert any(not torch.equal(t, start_weights[k]) for k, t in loaded.state_dict().items())


def test_sharded_and_replicated_ranks_take_the_same_first_steps(tmp_path: Path) -> None:
    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    data = _prompts(tmp_path)
    runs = {}
    for parallel in ("replicate", "shard"):
        config = _toy_config(policy, parallel=parallel, steps=2)
        _, runs[parallel], _ = _launch("ppo", config, data, tmp_path / parallel, tmp_path / f"job-{parallel}")
    worst: dict[str, float] = {}
    for number, (whole, sharded) in enumerate(zip(runs["replicate"], runs["shard"], strict=True), start=1):
        # Step 2 samples from weights that already differ by rounding; a token whose value sits at the
        # clip edge may flip sides there, so its clip fraction is compared at step 1 only.
        keys = [k for k in whole if k not in TIMINGS and (number == 1 or "clip_fraction" not in k)]
        for key in keys:
            assert sharded[key] == pytest.approx(whole[key], rel=TOLERANCE, abs=TOLERANCE), (number, key)
            worst[key] = max(worst.get(key, 0.0), abs(sharded[key] - whole[key]))
    one, two = load_file(tmp_path / "replicate" / "model.safetensors"), load_file(tmp_path / "shard" / "model.safetensors")
    difference = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"\nsharded vs replicated, largest differences: {worst}; weights after 2 steps {difference:.2e}")
    assert difference < 1e-4


def test_a_sharded_run_on_a_bf16_base_publishes_bf16(tmp_path: Path) -> None:
    policy = save_tiny_llama_bf16(tmp_path / "policy", chat=True)
    config = _toy_config(policy, parallel="shard", steps=1, ppo_epochs=1, batch_size=4, mini_batch_size=4,
                         max_new_tokens=4, weights="auto")  # on the CPU: fp32 weights, saved in bf16
    _launch("ppo", config, _prompts(tmp_path), tmp_path / "out", tmp_path / "job")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["precision"]["weights"] == "float32"
    assert safetensors_dtypes(tmp_path / "out") == {"BF16"}
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def test_a_config_refuses_sharded_adapters() -> None:
    for adapters in ({"lora_r": 4}, {"mode": "lora"}, {"mode": "qlora"}):
        with pytest.raises(ValueError, match="parallel='shard' shards full fine-tuning only"):
            PPOConfig(model="m", parallel="shard", **adapters)
    with pytest.raises(ValueError, match="parallel must be one of"):
        PPOConfig(model="m", parallel="fsdp")
    assert PPOConfig(model="m").parallel == "auto" and PPOConfig(model="m", lora_r=4).parallel == "auto"


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A process group of this process alone (gloo): FSDP2 gathers and frees as on several ranks."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("gather", [False, True], ids=["layer-by-layer", "gathered-once"])
def test_sampling_through_the_sharded_root_gathers_its_weights_and_frees_them_after(
        tmp_path: Path, one_rank_group: None, gather: bool) -> None:
    from torch.distributed.tensor import DTensor

    from training.lib.sharding import reshard, shard_policy

    folder = save_tiny_llama(tmp_path / "policy", chat=True)
    whole = AutoModelForCausalLM.from_pretrained(folder).eval()
    sharded = shard_policy(AutoModelForCausalLM.from_pretrained(folder).eval(), torch.device("cpu"))
    ids = torch.tensor([[2, 4, 30, 31, 7, 5], [0, 2, 4, 32, 7, 5]])
    settings = {"input_ids": ids, "attention_mask": (ids != 0).long(), "do_sample": True, "top_k": 0,
                "max_new_tokens": 6, "pad_token_id": 0}
    layer = sharded.inner.model.layers[0].mlp.up_proj
    # At each new token's LM head: is the first decoder layer still whole (kept) or back in shards (freed)?
    kept: list[bool] = []
    sharded.inner.lm_head.register_forward_hook(lambda *_: kept.append(not isinstance(layer.weight, DTensor)))
    samples = []
    for model in (whole, sharded):
        torch.manual_seed(3)
        with torch.no_grad():
            samples.append(model.generate(**settings, **({"gather": gather} if model is sharded else {})))
    # The embeddings and the LM head live in the root unit: the root's forward gathered them for sampling.
    assert torch.equal(samples[0], samples[1])
    assert kept == [gather] * 6  # gathered once and kept for every token, or gathered and freed at each
    assert not isinstance(sharded.inner.model.embed_tokens.weight, DTensor)  # a root stays gathered...
    reshard(sharded)
    assert isinstance(sharded.inner.model.embed_tokens.weight, DTensor)  # ...until it is resharded
    assert isinstance(layer.weight, DTensor)  # layers are shards again after sampling either way


def test_gathering_the_policy_for_sampling_changes_no_step(tmp_path: Path) -> None:
    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    data = _prompts(tmp_path)
    runs = {}
    for gather in (False, True):
        config = _toy_config(policy, parallel="shard", steps=2, gather_for_sampling=gather)
        _, runs[gather], _ = _launch("ppo", config, data, tmp_path / f"out-{gather}", tmp_path / f"job-{gather}")
    for lean, gathered in zip(runs[False], runs[True], strict=True):
        assert {k: v for k, v in gathered.items() if k not in TIMINGS} == \
            {k: v for k, v in lean.items() if k not in TIMINGS}
    one, two = load_file(tmp_path / "out-False" / "model.safetensors"), load_file(tmp_path / "out-True" / "model.safetensors")
    assert all(torch.equal(one[k], two[k]) for k in one)


class _AnotherRankShort(Team):
    """A team whose other rank reported no room (what `Team.most` agrees over gloo or NCCL)."""

    def most(self, value: int, device: torch.device) -> int:
        return max(value, 1)


def test_the_policy_is_gathered_for_sampling_only_where_every_gpu_has_room(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.lib.sharding import ShardedPolicy, room_to_gather

    # 1e6 weights gathered in bf16: 2 MB whole; the sampling's KV cache takes 0.5 MB besides.
    policy = ShardedPolicy(torch.nn.Linear(1000, 1000, bias=False), torch.bfloat16)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 1_000_000)  # cached by torch, 0.6 MB unused
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 400_000)
    for free_on_card, room in ((2_200_000, True), (1_900_000, False)):  # needs 1.1 x 2 MB + 0.5 MB = 2.7 MB
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free_on_card: (free, 80 * 2**30))
        assert room_to_gather(policy, cuda, Team(), reserve_bytes=500_000) is room
    assert room_to_gather(policy, cuda, _AnotherRankShort(rank=0, size=2), reserve_bytes=500_000) is False
    assert room_to_gather(policy, torch.device("cpu"), Team(), reserve_bytes=1e15) is True  # host memory
