"""The memory accounting behind the README's table and the automatic choice of mode."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from training.lib.memory import GIB, SHAPES, Shape, Workload, choose_mode, estimate, largest_fitting, main

BY_NAME = {s.name: s for s in SHAPES}


@pytest.mark.parametrize("tied", [True, False])
def test_the_parameter_count_is_the_real_models(tied):
    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    shape = Shape.from_config(config.to_dict())
    assert shape.params == sum(p.numel() for p in model.parameters())
    adapted = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert shape.lora_params(8) == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def test_the_listed_shapes_have_their_published_sizes():
    published = {"SmolLM2-135M": 134.5e6, "Qwen2.5-0.5B": 494e6, "Qwen2.5-7B": 7.62e9, "Llama-3.1-8B": 8.03e9,
                 "Llama-3.1-70B": 70.55e9}
    for name, size in published.items():
        assert BY_NAME[name].params == pytest.approx(size, rel=0.01), name


def test_a_7b_policy_needs_more_than_80_gb_for_full_fp32_dpo_and_fits_with_adapters():
    budget = 80 * GIB
    seven = BY_NAME["Qwen2.5-7B"]
    full = estimate("dpo", "full-fp32", seven)
    assert full.weights + full.optimizer == pytest.approx(16 * seven.params)  # 16 bytes per parameter
    assert not full.fits(budget) and estimate("dpo", "lora", seven).fits(budget)
    assert choose_mode("dpo", BY_NAME["SmolLM2-135M"], budget) == "full-fp32"
    assert choose_mode("dpo", BY_NAME["Llama-3.1-8B"], budget) == "full-bf16"
    assert choose_mode("dpo", BY_NAME["Llama-3.1-70B"], budget) == "qlora"
    assert choose_mode("dpo", BY_NAME["Llama-3.1-70B"], budget, qlora_available=False) is None


def test_more_work_needs_more_memory_and_checkpointing_saves_it():
    shape = BY_NAME["Qwen2.5-0.5B"]
    for kind in ("dpo", "ppo", "reward_model"):
        small, big = estimate(kind, "lora", shape, Workload(batch=2)), estimate(kind, "lora", shape, Workload(batch=16))
        assert small.total < big.total, kind
        kept = estimate(kind, "full-bf16", shape, Workload(gradient_checkpointing=False))
        assert estimate(kind, "full-bf16", shape).activations < kept.activations, kind
    # PPO holds a reference copy and a reward model beside the policy; LoRA needs no reference copy.
    assert estimate("ppo", "full-bf16", shape).other_models == pytest.approx(4 * shape.params)
    assert estimate("ppo", "lora", shape).other_models == pytest.approx(2 * shape.params)


def test_largest_fitting_and_bad_names(capsys):
    assert largest_fitting("dpo", "full-fp32", 1 * GIB) is None
    assert largest_fitting("reward_model", "qlora", 80 * GIB).name == "Llama-3.1-70B"
    with pytest.raises(ValueError, match="mode must be one of"):
        estimate("dpo", "int8", SHAPES[0])
    with pytest.raises(ValueError, match="kind must be one of"):
        estimate("sft", "lora", SHAPES[0])
    with pytest.raises(ValueError, match="no num_attention_heads"):
        Shape.from_config({"model_type": "bert"})
    assert main(["--gpu-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| mode | DPO | PPO | reward model |") and "| qlora |" in out


def test_the_readme_table_is_what_the_module_prints(capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- memory-table: [^\n]*--gpu-gb (\d+)[^\n]*-->\n(.*?)\n<!-- /memory-table -->", readme, re.S)
    assert found, "README.md has no memory table between its markers"
    assert main(["--gpu-gb", found.group(1)]) == 0
    assert found.group(2).strip() == capsys.readouterr().out.strip()
