"""Reward-model runs from bf16 and fp32 backbones: what dtype they train in and save in, and that the folder reloads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.model import load_reward_model
from rewardmodel.lib.score import score
from rewardmodel.lib.train import train_reward_model
from tests.tiny import (
    counting_pairs,
    safetensors_dtypes,
    save_tiny_bert,
    save_tiny_bert_bf16,
    save_tiny_llama,
    save_tiny_llama_bf16,
)

BF16_BASES = {"bert": save_tiny_bert_bf16, "llama": save_tiny_llama_bf16}


def _run(backbone: Path, out: Path, **overrides: object) -> dict:
    config = RewardConfig(backbone=str(backbone), learning_rate=3e-3, epochs=1, batch_size=8, eval_fraction=0.25,
                          num_threads=1, device="cpu", **overrides)
    result = train_reward_model(config, counting_pairs(12, 2, noise=0.0, seed=3), out)
    assert all(math.isfinite(e["loss"]) for e in result.history)
    return json.loads(Path(result.meta_path).read_text())


@pytest.mark.parametrize("weights", ["auto", "checkpoint"])
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_a_bf16_backbone_gives_a_bf16_reward_model_that_reloads(tmp_path: Path, kind: str, weights: str) -> None:
    """On the CPU "auto" trains fp32 weights and "checkpoint" bf16 ones; both save the backbone in bf16."""
    base = BF16_BASES[kind](tmp_path / kind)
    out = tmp_path / "out"
    meta = _run(base, out, weights=weights)
    assert meta["dtype"] == "bfloat16"
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:  # the heads stay fp32
        stored = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}  # noqa: SIM118
    heads = {"score.weight"} if kind == "llama" else {"classifier.weight", "classifier.bias"}
    assert {stored.pop(name) for name in heads} == {"F32"} and set(stored.values()) == {"BF16"}
    assert AutoModel.from_pretrained(out).dtype == torch.bfloat16
    start = AutoModel.from_pretrained(base)
    trained = AutoModel.from_pretrained(out)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters(), strict=True))
    for dtype in (torch.bfloat16, torch.float32):
        model = load_reward_model(out, dtype=dtype)
        assert model.backbone.dtype == dtype and model.head.weight.dtype == torch.float32
        assert model.saved_dtype == torch.bfloat16
        rewards = score(model, ["hello world", "q1 q2"], ["good good", "bad"])
        assert all(math.isfinite(r) for r in rewards)


def test_the_backbone_trains_in_the_dtype_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rewardmodel.lib.train as train_module

    seen = []
    real = train_module.build_reward_model

    def spy(config: RewardConfig, **kwargs: object) -> object:
        model = real(config, **kwargs)
        seen.append((model.backbone.dtype, model.head.weight.dtype, model.saved_dtype))
        return model

    monkeypatch.setattr(train_module, "build_reward_model", spy)
    _run(save_tiny_bert_bf16(tmp_path / "bert"), tmp_path / "out", weights="checkpoint")
    _run(save_tiny_bert_bf16(tmp_path / "bert2"), tmp_path / "out2", weights="fp32")
    assert seen == [(torch.bfloat16, torch.float32, torch.bfloat16),  # the heads stay fp32 over bf16 weights
                    (torch.float32, torch.float32, torch.bfloat16)]


def test_an_fp32_backbone_gives_an_fp32_reward_model(tmp_path: Path) -> None:
    for kind, save in (("bert", save_tiny_bert), ("llama", save_tiny_llama)):
        out = tmp_path / f"out-{kind}"
        assert _run(save(tmp_path / kind), out, weights="checkpoint")["dtype"] == "float32"
        assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
        assert safetensors_dtypes(out / "model.safetensors") == {"F32"}
