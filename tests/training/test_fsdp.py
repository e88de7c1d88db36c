"""Sharded full fine-tuning (FSDP2) under torchrun: two CPU processes (gloo) against one.

A sharded run must take the optimizer steps one process takes on the whole batch: the same losses,
gradient norms and final weights, to rounding, however a batch splits between the ranks.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from rewardmodel.lib.ranks import Team
from tests.tiny import llama_config, llama_tokenizer, save_tiny_llama
from tests.training.test_distributed import _launch, _write_pairs
from tests.training.test_dpo import one_thread, toy_pairs  # noqa: F401  (one_thread: an autouse fixture)
from training.lib.dpo import DPOConfig, DPOResult, _plan, train_dpo
from training.lib.dpo_data import encode_pairs
from training.lib.sharding import decoder_layers, resolve_parallel

pytestmark = pytest.mark.timeout(300)

TOLERANCE = 1e-5  # fp32 on the CPU; the tests print the largest differences they saw


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", chat=True)


def _save_tied_llama(folder: Path) -> Path:
    """`save_tiny_llama`'s shape with the LM head tied to the embeddings (as SmolLM2's and Qwen's are)."""
    tok = llama_tokenizer(chat=True)
    torch.manual_seed(1)
    LlamaForCausalLM(llama_config(tok, tie_word_embeddings=True)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _assert_same_steps(alone: DPOResult, steps: list[dict]) -> dict[str, float]:
    """Every logged step of the two runs agrees to TOLERANCE; returns the largest difference per figure."""
    assert [s["step"] for s in steps] == [h["step"] for h in alone.history]
    worst: dict[str, float] = {}
    for one, two in zip(alone.history, steps, strict=True):
        for key in ("loss", "margin", "accuracy", "grad_norm", "kl", "pairs_seen", "tokens_seen"):
            assert two[key] == pytest.approx(one[key], rel=TOLERANCE, abs=TOLERANCE), key
            worst[key] = max(worst.get(key, 0.0), abs(two[key] - one[key]))
    return worst


def _largest_weight_difference(a: Path, b: Path) -> float:
    one, two = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert one.keys() == two.keys() and all(one[k].dtype == two[k].dtype for k in one)
    return max(float((one[k] - two[k]).abs().max()) for k in one)


def test_sharded_ranks_take_the_steps_of_one_process(tiny: Path, tmp_path: Path) -> None:
    # 21 pairs in micro-batches of 5: the odd ones split 3 + 2, and the one of a single pair leaves
    # rank 1 nothing (it still runs a forward and backward, for the collectives, that count for
    # nothing). Two micro-batches per step; the third step has one.
    config = DPOConfig(model=str(tiny), beta=0.5, learning_rate=5e-3, batch_size=5, grad_accum=2, epochs=1,
                       weight_decay=0.01, num_threads=1, device="cpu")
    pairs = toy_pairs(21)
    alone = train_dpo(config, pairs, tmp_path / "alone")
    assert alone.config.parallel == "replicate"  # one process: always a whole model
    examples, _ = encode_pairs(AutoTokenizer.from_pretrained(tiny), pairs, max_length=config.max_length,
                               max_prompt_length=config.max_prompt_length)
    plan = _plan(examples, config, alone.metrics["shared_prefix"] == 1.0)
    assert sorted(map(len, plan)) == [1, 5, 5, 5, 5]

    result, steps, _ = _launch("dpo", config, _write_pairs(pairs, tmp_path / "pairs.jsonl"), tmp_path / "two",
                               tmp_path / "job")
    assert len(steps) == 3 and steps[-1]["pairs_seen"] == 21
    worst = _assert_same_steps(alone, steps)
    # Rank 0 published an ordinary checkpoint (whole weights, the base's dtype) of the one-process weights.
    assert result["out"] == str(tmp_path / "two")
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["config"]["parallel"] == "shard" and meta["lineage"] == {"run": 7} and meta["dtype"] == "float32"
    difference = _largest_weight_difference(tmp_path / "alone", tmp_path / "two")
    print(f"\nsharded vs one process, largest differences: {worst}; weights {difference:.2e}")
    assert difference < TOLERANCE


def test_sharded_ranks_match_one_process_with_a_per_step_reference(tmp_path: Path) -> None:
    # No precomputed reference: a frozen copy, sharded too, runs beside the policy at every micro-batch;
    # gradient checkpointing recomputes each sharded layer in the backward pass; the head is the
    # embedding matrix (one parameter in the root unit, saved and reloaded tied).
    tied = _save_tied_llama(tmp_path / "tied")
    config = DPOConfig(model=str(tied), beta=0.5, learning_rate=5e-3, batch_size=3, grad_accum=2, max_steps=2,
                       precompute_ref=False, gradient_checkpointing=True, parallel="shard", num_threads=1,
                       device="cpu")
    pairs = toy_pairs(13, seed=1)
    alone = train_dpo(config, pairs, tmp_path / "alone")
    _, steps, _ = _launch("dpo", config, _write_pairs(pairs, tmp_path / "pairs.jsonl"), tmp_path / "two",
                          tmp_path / "job")
    worst = _assert_same_steps(alone, steps)
    published = AutoModelForCausalLM.from_pretrained(tmp_path / "two")
    assert published.lm_head.weight.data_ptr() == published.model.embed_tokens.weight.data_ptr()
    difference = _largest_weight_difference(tmp_path / "alone", tmp_path / "two")
    print(f"\nper-step reference, largest differences: {worst}; weights {difference:.2e}")
    assert difference < TOLERANCE


def test_replicas_remain_on_request(tiny: Path, tmp_path: Path) -> None:
    config = DPOConfig(model=str(tiny), beta=0.5, learning_rate=5e-3, batch_size=5, grad_accum=2, max_steps=2,
                       parallel="replicate", num_threads=1, device="cpu")
    pairs = toy_pairs(21)
    _, steps, _ = _launch("dpo", config, _write_pairs(pairs, tmp_path / "pairs.jsonl"), tmp_path / "two",
                          tmp_path / "job")
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["config"]["parallel"] == "replicate"
    _assert_same_steps(train_dpo(config, pairs, tmp_path / "alone"), steps)


def test_only_several_ranks_of_full_fine_tuning_shard() -> None:
    two, one = Team(rank=0, size=2), Team()
    assert resolve_parallel("auto", "full", two) == "shard"
    assert resolve_parallel("auto", "lora", two) == resolve_parallel("auto", "qlora", two) == "replicate"
    assert resolve_parallel("auto", "full", one) == resolve_parallel("shard", "full", one) == "replicate"
    assert resolve_parallel("replicate", "full", two) == "replicate"
    with pytest.raises(ValueError, match="resolved to mode 'lora'"):
        resolve_parallel("shard", "lora", two)  # mode "auto" chose LoRA on this GPU


def test_a_config_refuses_sharded_adapters_and_unknown_settings() -> None:
    with pytest.raises(ValueError, match="full fine-tuning only"):
        DPOConfig(model="m", parallel="shard", mode="lora")
    with pytest.raises(ValueError, match="full fine-tuning only"):
        DPOConfig(model="m", parallel="shard", lora=True)
    with pytest.raises(ValueError, match="parallel must be one of"):
        DPOConfig(model="m", parallel="fsdp")


def test_each_decoder_layer_is_a_unit_of_its_own(tiny: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert decoder_layers(model) == list(model.model.layers)
