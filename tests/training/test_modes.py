"""The `mode` setting of every run kind: its spelling in the configs, the automatic rule, QLoRA's refusals.

The QLoRA runs themselves need a CUDA GPU and bitsandbytes: those tests are skipped elsewhere.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from rewardmodel.lib.config import RewardConfig
from training.lib.dpo_config import DPOConfig
from training.lib.memory import GIB, SHAPES, Workload
from training.lib.modes import resolve_mode, resolve_run_mode
from training.lib.ppo_config import PPOConfig

BY_NAME = {s.name: s for s in SHAPES}
CUDA = torch.device("cuda")
HAS_QLORA = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def _config_folder(folder: Path, name: str) -> str:
    """A model folder holding only the config.json of a listed shape (all the automatic rule reads)."""
    shape = BY_NAME[name]
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": shape.hidden, "num_hidden_layers": shape.layers,
        "intermediate_size": shape.intermediate, "vocab_size": shape.vocab, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "tie_word_embeddings": shape.tied_embeddings, "dtype": "bfloat16"}))
    return str(folder)


@pytest.fixture
def bitsandbytes_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes"
                        else real(name, *a))


@pytest.fixture
def bitsandbytes_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes"
                        else real(name, *a))


def test_lora_flags_and_mode_say_the_same_thing() -> None:
    assert DPOConfig(model="m").mode == "auto" and not DPOConfig(model="m").lora
    assert DPOConfig(model="m", lora=True).mode == "lora"
    assert DPOConfig(model="m", mode="qlora").lora and DPOConfig(model="m", mode="lora").lora
    assert not DPOConfig(model="m", mode="full").lora
    assert PPOConfig(model="m", lora_r=4).mode == "lora"
    assert PPOConfig(model="m", mode="lora").lora_r == 16 and PPOConfig(model="m", mode="qlora", lora_r=8).lora_r == 8
    for config in (DPOConfig(model="m", lora=True), PPOConfig(model="m", mode="qlora"),
                   RewardConfig(backbone="b", mode="lora")):
        assert type(config).from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="lora=True contradicts mode='full'"):
        DPOConfig(model="m", lora=True, mode="full")
    with pytest.raises(ValueError, match="lora_r > 0 contradicts mode='full'"):
        PPOConfig(model="m", lora_r=4, mode="full")
    for cls, inputs in ((DPOConfig, {"model": "m"}), (PPOConfig, {"model": "m"}), (RewardConfig, {"backbone": "b"})):
        with pytest.raises(ValueError, match="mode must be one of"):
            cls(**inputs, mode="int8")


def test_the_command_lines_take_mode() -> None:
    import argparse

    from rewardmodel.lib.runtime import add_config_options
    from training.lib.dpo_cli import _parser as dpo_parser
    from training.lib.dpo_cli import config_from_args

    args = dpo_parser().parse_args(["--data", "d", "--model", "m", "--out", "o", "--mode", "lora"])
    assert config_from_args(args).mode == "lora" and config_from_args(args).lora
    for cls in (PPOConfig, RewardConfig):  # as `python -m training.lib.ppo_cli` and `-m rewardmodel.lib train` add them
        parser = argparse.ArgumentParser()
        add_config_options(parser, cls, skip={"model", "reward", "backbone"})
        assert parser.parse_args(["--mode", "qlora", "--lora-r", "8"]).mode == "qlora"
        with pytest.raises(SystemExit):
            parser.parse_args(["--mode", "int8"])


def test_auto_is_full_off_cuda_whatever_the_size(tmp_path: Path) -> None:
    path = _config_folder(tmp_path / "big", "Llama-3.1-70B")
    for kind in ("dpo", "ppo", "reward_model"):
        assert resolve_mode("auto", kind=kind, model_path=path, device=torch.device("cpu"),
                            full_dtype=torch.float32, work=Workload()) == "full"
    config = DPOConfig(model=path, device="cpu")
    assert resolve_run_mode(config, kind="dpo", device=torch.device("cpu")).mode == "full"


def test_auto_on_a_gpu_picks_the_first_mode_that_fits(tmp_path: Path, bitsandbytes_installed: None) -> None:
    """80 GiB free: an 8B policy trains in full with bf16 weights but needs adapters with fp32 master weights."""
    def pick(name: str, full_dtype: torch.dtype = torch.float32, kind: str = "dpo") -> str:
        path = _config_folder(tmp_path / f"{name}-{kind}-{full_dtype}", name)
        return resolve_mode("auto", kind=kind, model_path=path, device=CUDA, full_dtype=full_dtype,
                            work=Workload(), budget_bytes=80 * GIB)

    assert pick("SmolLM2-1.7B") == "full"
    assert pick("Llama-3.1-8B") == "lora"
    assert pick("Llama-3.1-8B", torch.bfloat16) == "full"
    assert pick("Qwen2.5-32B") == "qlora" and pick("Llama-3.1-70B") == "qlora"
    assert pick("Llama-3.1-8B", kind="ppo") == "lora"


def test_auto_without_bitsandbytes_falls_back_to_lora(tmp_path: Path, bitsandbytes_missing: None) -> None:
    path = _config_folder(tmp_path / "big", "Llama-3.1-70B")
    assert resolve_mode("auto", kind="dpo", model_path=path, device=CUDA, full_dtype=torch.float32,
                        work=Workload(), budget_bytes=80 * GIB) == "lora"


def test_auto_trains_an_unreadable_architecture_in_full(tmp_path: Path, bitsandbytes_installed: None) -> None:
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert resolve_mode("auto", kind="reward_model", model_path=str(tmp_path / "bert"), device=CUDA,
                        full_dtype=torch.float32, work=Workload(), budget_bytes=1 * GIB) == "full"


def test_qlora_is_refused_on_the_cpu_and_without_bitsandbytes(tmp_path: Path, bitsandbytes_missing: None) -> None:
    path = _config_folder(tmp_path / "m", "SmolLM2-135M")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_mode("qlora", kind="dpo", model_path=path, device=torch.device("cpu"), full_dtype=torch.float32,
                     work=Workload())
    with pytest.raises(ValueError, match="needs bitsandbytes, which is not installed"):
        resolve_mode("qlora", kind="dpo", model_path=path, device=CUDA, full_dtype=torch.float32, work=Workload())


def test_dpo_and_ppo_refuse_qlora_on_the_cpu_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.lib.dpo import train_dpo
    from training.lib.ppo import train_ppo

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded weights before refusing")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_loading)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_loading)
    path = _config_folder(tmp_path / "m", "SmolLM2-135M")
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    with pytest.raises(ValueError, match="mode='qlora' needs a CUDA GPU"):
        train_dpo(DPOConfig(model=path, mode="qlora", device="cpu"), [pair], tmp_path / "dpo")
    with pytest.raises(ValueError, match="mode='qlora' needs a CUDA GPU"):
        train_ppo(PPOConfig(model=path, mode="qlora", device="cpu", reward="rule:length"),
                  [[{"role": "user", "content": "hi"}]], tmp_path / "ppo")


def test_merging_over_a_reloaded_base_equals_merging_in_place(tmp_path: Path) -> None:
    """What a QLoRA checkpoint does at save (here over an unquantised base, which the CPU can hold)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.tiny import save_tiny_llama
    from training.lib.modes import merged_over_full_precision_base

    base_path = save_tiny_llama(tmp_path / "base")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    reloaded = merged_over_full_precision_base(model, torch.bfloat16)
    in_place = model.merge_and_unload()
    assert reloaded.dtype == torch.bfloat16 and not any("lora" in n for n, _ in reloaded.named_parameters())
    for (name, got), (_, want) in zip(reloaded.state_dict().items(), in_place.state_dict().items(), strict=True):
        assert torch.allclose(got.float(), want.float().to(got.dtype).float(), atol=1e-2), name


# The QLoRA runs: on a CUDA GPU with bitsandbytes only.
needs_qlora = pytest.mark.skipif(not HAS_QLORA, reason="QLoRA needs a CUDA GPU and bitsandbytes")


@needs_qlora
def test_qlora_runs_of_every_kind_train_and_save_in_the_base_dtype(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rewardmodel.lib.model import load_reward_model
    from rewardmodel.lib.score import score
    from rewardmodel.lib.train import train_reward_model
    from tests.tiny import counting_pairs, save_tiny_llama_bf16
    from training.lib.dpo import train_dpo
    from training.lib.ppo import train_ppo

    base = save_tiny_llama_bf16(tmp_path / "base", chat=True)
    rm = train_reward_model(RewardConfig(backbone=str(base), mode="qlora", lora_r=4, epochs=1, batch_size=8,
                                         learning_rate=1e-3, device="cuda"),
                            counting_pairs(8, 2, noise=0.0, seed=0), tmp_path / "rm")
    rm_meta = json.loads(Path(rm.meta_path).read_text())
    assert rm_meta["mode"] == "qlora" and rm_meta["dtype"] == "bfloat16"
    loaded = load_reward_model(tmp_path / "rm", device="cuda", dtype=torch.bfloat16)
    assert all(math.isfinite(r) for r in score(loaded, ["hi"], ["good good"]))

    pairs = [{"prompt": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": "bad"}] * 8
    dpo = train_dpo(DPOConfig(model=str(base), mode="qlora", lora_r=4, batch_size=4, device="cuda"), pairs,
                    tmp_path / "dpo")
    dpo_meta = json.loads((Path(dpo.checkpoint_path) / "meta.json").read_text())
    assert dpo_meta["config"]["mode"] == "qlora" and dpo_meta["weights"] == "merged"
    assert dpo_meta["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(dpo.checkpoint_path).dtype == torch.bfloat16

    ppo = train_ppo(PPOConfig(model=str(base), mode="qlora", lora_r=4, reward="rule:count:good", steps=2,
                              batch_size=4, mini_batch_size=2, max_new_tokens=4, device="cuda"),
                    [[{"role": "user", "content": "hi"}]] * 4, tmp_path / "ppo")
    assert json.loads((Path(ppo.out_dir) / "meta.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(ppo.out_dir).dtype == torch.bfloat16


def test_auto_on_several_gpus_costs_sharded_full_fine_tuning(tmp_path: Path, bitsandbytes_installed: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8B policy needs adapters on one 80 GB GPU with fp32 master weights, but trains in full over eight
    sharded ones; replicated processes each hold it whole, and asking to shard leaves only full."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    path = _config_folder(tmp_path / "8b", "Llama-3.1-8B")

    def pick(kind: str, ranks: int, **settings) -> str:
        config = {"dpo": DPOConfig, "ppo": PPOConfig}[kind](model=path, **settings)
        return resolve_run_mode(config, kind=kind, device=CUDA, ranks=ranks).mode

    assert pick("dpo", 1) == "lora"
    assert pick("dpo", 8) == "full"
    assert pick("dpo", 8, parallel="replicate") == "lora"
    assert pick("ppo", 1, batch_size=8, mini_batch_size=8) == "lora"
    assert pick("ppo", 8, batch_size=8, mini_batch_size=8) == "full"
    reward = RewardConfig(backbone=path)
    assert resolve_run_mode(reward, kind="reward_model", device=CUDA, ranks=1).mode == "qlora"  # 16 pairs a batch
    assert resolve_run_mode(reward, kind="reward_model", device=CUDA, ranks=8).mode == "full"
    # On several GPUs asking to shard is asking for full fine-tuning (the configs refuse to shard adapters),
    # refused at once, with what it needs, where that does not fit.
    assert resolve_run_mode(DPOConfig(model=path, parallel="shard"), kind="dpo", device=CUDA, ranks=8).mode == "full"
    big = _config_folder(tmp_path / "70b", "Llama-3.1-70B")
    assert resolve_run_mode(DPOConfig(model=big), kind="dpo", device=CUDA, ranks=2).mode == "qlora"
    with pytest.raises(ValueError, match=r"parallel='shard' asks for full fine-tuning, which needs about \d+ GiB "
                                         r"per GPU on 2 GPUs .*\(80 GiB free\)"):
        resolve_run_mode(DPOConfig(model=big, parallel="shard"), kind="dpo", device=CUDA, ranks=2)
    # One GPU: `parallel` changes nothing (the run replicates, i.e. holds its one copy).
    alone = resolve_run_mode(DPOConfig(model=path, parallel="shard"), kind="dpo", device=CUDA)
    assert (alone.mode, alone.parallel) == ("lora", "replicate")
