"""A sharded reward model (FSDP2) under torchrun: two CPU processes (gloo) against one.

A sharded run must take the optimizer steps one process takes on the whole batch: the same losses,
gradient norms, ensemble heads and final weights, to rounding, however a batch splits between the
ranks; rank 0 saves the ordinary folder. Each job starts real processes through
`training.lib.distributed` (torchrun), as the app's GPU worker does.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.model import load_reward_model
from rewardmodel.lib.ranks import Team
from rewardmodel.lib.sharding import resolve_parallel
from rewardmodel.lib.train import RewardResult, train_reward_model
from tests.tiny import counting_pairs, safetensors_dtypes, save_tiny_llama, save_tiny_llama_bf16
from tests.training.test_distributed import _launch, _write_pairs
from tests.training.test_dpo import one_thread  # noqa: F401  (an autouse fixture)
from tests.training.test_fsdp import _largest_weight_difference

pytestmark = pytest.mark.timeout(300)

TOLERANCE = 1e-5  # fp32 on the CPU; the tests print the largest differences they saw


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def _assert_same_steps(alone: RewardResult, steps: list[dict]) -> dict[str, float]:
    """Every logged step of the two runs agrees to TOLERANCE; returns the largest difference per figure."""
    assert [s["step"] for s in steps] == [h["step"] for h in alone.history]
    worst: dict[str, float] = {}
    for one, two in zip(alone.history, steps, strict=True):
        for key in ("loss", "accuracy", "grad_norm", "pairs_seen", "tokens_seen"):
            assert two[key] == pytest.approx(one[key], rel=TOLERANCE, abs=TOLERANCE), key
            worst[key] = max(worst.get(key, 0.0), abs(two[key] - one[key]))
    return worst


def test_sharded_ranks_take_the_steps_of_one_process(tiny: Path, tmp_path: Path) -> None:
    # 27 training pairs in micro-batches of 13, two per step: 13 splits 7 + 6, and the last batch, a
    # single pair, leaves rank 1 nothing (it still runs that pair forward and backward, for the
    # collectives, with its loss counting 0). Three heads over two ranks: the head's rows shard
    # unevenly; each head keeps its own bootstrap weights, which decide the ranks' shares of the loss.
    config = RewardConfig(backbone=str(tiny), learning_rate=1e-3, epochs=2, batch_size=13, grad_accum=2,
                          eval_fraction=0.25, ensemble_size=3, weight_decay=0.01, num_threads=1, device="cpu")
    pairs = counting_pairs(12, 3, noise=0.1, seed=0)
    alone = train_reward_model(config, pairs, tmp_path / "alone")
    assert alone.metrics["train_pairs"] == 27 and len(alone.history) == 3
    assert json.loads((tmp_path / "alone" / "meta.json").read_text())["parallel"] == "replicate"

    result, steps, _ = _launch("reward_model", config, _write_pairs(pairs, tmp_path / "pairs.jsonl"),
                               tmp_path / "two", tmp_path / "job")
    worst = _assert_same_steps(alone, steps)
    assert steps[-1]["pairs_seen"] == 54  # two epochs; the stand-in pair counted nowhere
    # Rank 0 evaluated whole weights on the held-out prompts, as one process does.
    for key in ("eval_accuracy", "eval_loss", "eval_ensemble_std_mean", "eval_ensemble_disagreement"):
        assert result["metrics"][key] == pytest.approx(alone.metrics[key], rel=TOLERANCE, abs=TOLERANCE), key
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["parallel"] == "shard" and meta["mode"] == "full" and meta["layout"] == "sequence_classification"
    assert meta["dtype"] == "float32" and meta["ensemble_size"] == 3
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "alone").iterdir())
    difference = _largest_weight_difference(tmp_path / "alone", tmp_path / "two")
    print(f"\nsharded vs one process, largest differences: {worst}; weights {difference:.2e}")
    assert difference < TOLERANCE

    # The folder loads where today's loads: the project's loader and transformers' own class.
    ours, theirs = load_reward_model(tmp_path / "two"), load_reward_model(tmp_path / "alone")
    assert torch.allclose(ours.head.weight, theirs.head.weight, atol=TOLERANCE)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "two").eval()
    assert classifier.config.num_labels == 3
    ids = torch.tensor([ours.formatter.encode_for_scoring(["hello"], ["good good world"], 64)[0]])
    with torch.no_grad():
        logits = classifier(input_ids=ids).logits
        rewards = ours(ids, torch.ones_like(ids), last_index=torch.tensor([ids.shape[1] - 1]))
    assert torch.allclose(logits, rewards, atol=1e-5)


def test_a_learned_tie_parameter_stays_whole_and_matches_one_process(tiny: Path, tmp_path: Path) -> None:
    # Davidson's tie parameter is a scalar FSDP cannot shard: every rank keeps it whole and its
    # gradient is summed beside the shards'; the clipping norm spans both.
    config = RewardConfig(backbone=str(tiny), learning_rate=1e-3, epochs=1, batch_size=9, grad_accum=1,
                          eval_fraction=0.25, ensemble_size=2, loss="davidson", parallel="shard", num_threads=1,
                          device="cpu")
    pairs = counting_pairs(12, 3, noise=0.1, seed=1, ties=True)
    alone = train_reward_model(config, pairs, tmp_path / "alone")
    _, steps, _ = _launch("reward_model", config, _write_pairs(pairs, tmp_path / "pairs.jsonl"), tmp_path / "two",
                          tmp_path / "job")
    worst = _assert_same_steps(alone, steps)
    tie = [json.loads((tmp_path / run / "meta.json").read_text())["tie_param"] for run in ("alone", "two")]
    assert tie[0] != 0.0 and tie[1] == pytest.approx(tie[0], abs=TOLERANCE)
    difference = _largest_weight_difference(tmp_path / "alone", tmp_path / "two")
    print(f"\ntie parameter, largest differences: {worst}; weights {difference:.2e}; tie {abs(tie[1] - tie[0]):.2e}")
    assert difference < TOLERANCE


def test_a_bf16_backbone_shards_beside_fp32_heads(tmp_path: Path) -> None:
    # FSDP reduces one dtype per unit: the heads (fp32) are a unit apart from the backbone's root
    # weights (bf16 embeddings and norm). bf16 sums in another order: agreement to bf16 rounding.
    backbone = save_tiny_llama_bf16(tmp_path / "llama")
    config = RewardConfig(backbone=str(backbone), learning_rate=1e-3, epochs=1, batch_size=13, eval_fraction=0.25,
                          ensemble_size=2, weights="checkpoint", num_threads=1, device="cpu")
    pairs = counting_pairs(12, 3, noise=0.1, seed=0)
    alone = train_reward_model(config, pairs, tmp_path / "alone")
    _, steps, _ = _launch("reward_model", config, _write_pairs(pairs, tmp_path / "pairs.jsonl"), tmp_path / "two",
                          tmp_path / "job")
    for one, two in zip(alone.history, steps, strict=True):
        for key in ("loss", "grad_norm"):
            assert two[key] == pytest.approx(one[key], rel=5e-3), key
    saved = load_file(tmp_path / "two" / "model.safetensors")
    assert saved["score.weight"].dtype == torch.float32 and saved["model.norm.weight"].dtype == torch.bfloat16
    assert safetensors_dtypes(tmp_path / "two") == safetensors_dtypes(tmp_path / "alone") == {"BF16", "F32"}
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["dtype"] == "bfloat16"


def test_replicas_remain_on_request(tiny: Path, tmp_path: Path) -> None:
    config = RewardConfig(backbone=str(tiny), learning_rate=1e-3, epochs=1, batch_size=13, eval_fraction=0.25,
                          ensemble_size=2, parallel="replicate", num_threads=1, device="cpu")
    pairs = counting_pairs(12, 3, noise=0.1, seed=0)
    _, steps, _ = _launch("reward_model", config, _write_pairs(pairs, tmp_path / "pairs.jsonl"), tmp_path / "two",
                          tmp_path / "job")
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["parallel"] == "replicate"
    _assert_same_steps(train_reward_model(config, pairs, tmp_path / "alone"), steps)


def test_only_several_ranks_of_full_fine_tuning_shard_a_reward_model() -> None:
    two, one = Team(rank=0, size=2), Team()
    config = RewardConfig(backbone="m")
    assert config.parallel == "auto"
    assert resolve_parallel(config.parallel, "full", two) == "shard"
    assert resolve_parallel(config.parallel, "lora", two) == resolve_parallel(config.parallel, "qlora", two) == "replicate"
    assert resolve_parallel(config.parallel, "full", one) == resolve_parallel("shard", "full", one) == "replicate"
    assert resolve_parallel("replicate", "full", two) == "replicate"
    with pytest.raises(ValueError, match="resolved to mode 'lora'"):
        resolve_parallel(RewardConfig(backbone="m", parallel="shard").parallel, "lora", two)  # "auto" chose LoRA


def test_a_reward_config_refuses_sharded_adapters_and_unknown_settings() -> None:
    for mode in ("lora", "qlora"):
        with pytest.raises(ValueError) as refused:
            RewardConfig(backbone="m", parallel="shard", mode=mode)
        assert "parallel='shard'" in str(refused.value) and f"mode={mode!r}" in str(refused.value)
    with pytest.raises(ValueError, match="parallel must be one of"):
        RewardConfig(backbone="m", parallel="fsdp")
    config = RewardConfig(backbone="m", parallel="shard", mode="full")
    assert RewardConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert RewardConfig.from_dict({"backbone": "m"}).parallel == "auto"  # a meta.json from before the setting
