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


def test_the_readme_tables_are_what_the_module_prints(capsys):
    """One GPU, and a node of eight (full fine-tuning sharded)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    tables = re.findall(r"<!-- memory-table: [^\n]*?memory( [^\n]*?) \(tests[^\n]*-->\n(.*?)\n<!-- /memory-table -->",
                        readme, re.S)
    assert len(tables) == 2, "README.md should hold the one-GPU and the eight-GPU tables between their markers"
    for arguments, printed in tables:
        assert main(arguments.split()) == 0
        assert printed.strip() == capsys.readouterr().out.strip(), arguments


def test_sharding_splits_the_trained_state_over_the_gpus_and_a_full_8b_fits_eight():
    """FSDP's 1/N of weights, gradients and AdamW state: full fp32 DPO of an 8B model needs ~128 GiB of state,
    16 GiB per GPU on eight, plus the layers gathered whole; LoRA's state is not split."""
    eight_b, budget = BY_NAME["Llama-3.1-8B"], 80 * GIB
    alone = estimate("dpo", "full-fp32", eight_b, Workload(batch=8))
    sharded = estimate("dpo", "full-fp32", eight_b, Workload(batch=8, ranks=8, sharded=True))
    assert sharded.weights + sharded.optimizer == pytest.approx((alone.weights + alone.optimizer) / 8)
    assert sharded.weights + sharded.optimizer == pytest.approx(16 * eight_b.params / 8)
    assert not alone.fits(budget) and sharded.fits(budget)
    assert sharded.activations < alone.activations  # each GPU runs 1 of the 8 pairs
    # The gathered layers: the root unit (embeddings, LM head) and two decoder layers, whole, in bf16.
    assert 2 * eight_b.embedding_params < sharded.other_models < 2 * (eight_b.embedding_params + eight_b.params / 8)
    replicated = estimate("dpo", "full-fp32", eight_b, Workload(batch=8, ranks=8))
    assert replicated.weights == alone.weights and replicated.activations == sharded.activations
    lora = estimate("dpo", "lora", eight_b, Workload(batch=8, ranks=8, sharded=True))
    assert lora.weights == estimate("dpo", "lora", eight_b, Workload(batch=8)).weights
    # PPO's reference copy is sharded beside the policy; its reward model stays whole on every GPU.
    ppo = estimate("ppo", "full-bf16", eight_b, Workload(ranks=8, sharded=True))
    assert ppo.other_models == pytest.approx(2 * eight_b.params / 8 + 2 * eight_b.params + 2 * _gathered_bytes(eight_b))
    with pytest.raises(ValueError, match="ranks must be at least 1"):
        estimate("dpo", "lora", eight_b, Workload(ranks=0))


def _gathered_bytes(shape: Shape) -> float:
    return estimate("dpo", "full-bf16", shape, Workload(ranks=2, sharded=True)).other_models


def test_the_command_line_sizes_a_node_of_gpus(capsys):
    assert main(["--gpu-gb", "80", "--gpus", "8"]) == 0
    node = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "Qwen2.5-32B" in node["full-fp32"]  # one GPU: Qwen2.5-3B
    assert main(["--gpu-gb", "80"]) == 0
    assert "Qwen2.5-3B" in capsys.readouterr().out.splitlines()[2]
    with pytest.raises(SystemExit):
        main(["--gpus", "0"])
