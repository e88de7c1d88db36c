"""Reward models with LoRA adapters on the backbone: what trains, what is saved, and that it learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rewardmodel.lib.model as model_module
from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.model import build_reward_model, load_reward_model, save_reward_model
from rewardmodel.lib.score import score
from rewardmodel.lib.train import train_reward_model
from tests.tiny import counting_pairs, save_tiny_bert, save_tiny_llama

PROMPTS = ["q1 q2", "hello world", "the cat"]
RESPONSES = ["good good the", "bad cat", "good"]


@pytest.fixture(autouse=True)
def one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("rm-lora") / "llama")


def test_lora_trains_the_adapters_and_the_heads_only(llama: Path) -> None:
    model = build_reward_model(RewardConfig(backbone=str(llama), mode="lora", lora_r=4, device="cpu"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert model.mode == "lora" and "head.weight" in trainable
    backbone = trainable - {"head.weight", "tie_param"}
    assert backbone and all("lora_A" in name or "lora_B" in name for name in backbone)
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in backbone}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_a_lora_model_saves_merged_and_reloads_scoring_the_same(llama: Path, tmp_path: Path, kind: str) -> None:
    """Llama: last-token pooling over flat tokens; BERT: [CLS] through the final-layer shortcut and the pooler."""
    backbone = llama if kind == "llama" else save_tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    model = build_reward_model(RewardConfig(backbone=str(backbone), mode="lora", lora_r=4, device="cpu"))
    with torch.no_grad():  # fresh adapters are a no-op (B = 0): give them something to merge
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    model.eval()
    before = score(model, PROMPTS, RESPONSES)
    meta_path = save_reward_model(model, tmp_path / "rm", {"note": "lora"})
    assert json.loads(meta_path.read_text())["mode"] == "lora"
    saved = load_file(str(tmp_path / "rm" / "model.safetensors"))
    assert not any("lora" in name for name in saved)  # the usual folder: a plain backbone
    reloaded = load_reward_model(tmp_path / "rm")
    assert score(reloaded, PROMPTS, RESPONSES) == pytest.approx(before, abs=1e-5)
    assert score(model, PROMPTS, RESPONSES) == pytest.approx(before, abs=1e-5)  # merged in memory too


def test_a_lora_run_learns_and_leaves_the_frozen_weights_alone(llama: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    built = []

    def spy(config: RewardConfig, **kwargs: object) -> object:
        built.append(real(config, **kwargs))
        return built[-1]

    real = model_module.build_reward_model
    monkeypatch.setattr("rewardmodel.lib.train.build_reward_model", spy)
    config = RewardConfig(backbone=str(llama), mode="lora", lora_r=8, lora_alpha=16, learning_rate=1e-2, epochs=3,
                          batch_size=8, eval_fraction=0.25, num_threads=1, device="cpu")
    result = train_reward_model(config, counting_pairs(16, 3, noise=0.0, seed=1), tmp_path / "rm")
    losses = [entry["loss"] for entry in result.history]
    third = len(losses) // 3
    assert sum(losses[-third:]) / third < sum(losses[:third]) / third - 0.05
    assert result.metrics["eval_accuracy"] > 0.6
    meta = json.loads(Path(result.meta_path).read_text())
    assert meta["mode"] == "lora" and meta["config"]["mode"] == "lora"
    base, trained = load_file(str(llama / "model.safetensors")), load_file(str(tmp_path / "rm" / "model.safetensors"))
    # Both are transformers folders with the backbone under "model." (a causal LM, a sequence classifier).
    assert torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # no adapter: frozen
    assert torch.equal(trained["model.norm.weight"], base["model.norm.weight"])
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    reloaded = load_reward_model(tmp_path / "rm")
    assert score(reloaded, PROMPTS, RESPONSES) == pytest.approx(score(built[0].eval(), PROMPTS, RESPONSES), abs=1e-5)


def test_qlora_is_refused_on_the_cpu_before_anything_loads(llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded weights before refusing")

    monkeypatch.setattr("transformers.AutoModel.from_pretrained", no_loading)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_loading)
    with pytest.raises(ValueError, match="mode='qlora' needs a CUDA GPU"):
        build_reward_model(RewardConfig(backbone=str(llama), mode="qlora", device="cpu"), device=torch.device("cpu"))


def test_auto_trains_everything_on_the_cpu(llama: Path) -> None:
    model = build_reward_model(RewardConfig(backbone=str(llama), device="cpu"))
    assert model.mode == "full" and all(p.requires_grad for p in model.backbone.parameters())
