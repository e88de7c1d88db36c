"""Policy checkpoints are Hub-ready: a model card with lineage, and an adapter that names a portable base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from rewardmodel.lib.cards import portable_model_id
from tests.tiny import save_tiny_llama
from training.lib.checkpoint import load_checkpoint, load_policy, save_checkpoint

LINEAGE = {"run": 7, "kind": "dpo", "project": "demo", "parent_checkpoint": "base", "snapshot_sha256": "cd" * 32,
           "reward_model_version": None}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", chat=True)


def _adapter_policy(tiny: Path):
    torch.manual_seed(0)
    model, tok, path = load_policy(str(tiny), lora={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    return model.eval(), tok, path


@pytest.mark.parametrize(("base_model", "portable"), [
    ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),  # an alias: its hub id
    (None, "llama"),  # a local folder: its name, never the absolute path
])
def test_an_unmerged_adapter_names_a_portable_base_and_still_loads_here(tiny: Path, tmp_path: Path,
                                                                        base_model: str | None, portable: str) -> None:
    model, tok, path = _adapter_policy(tiny)
    meta = {"kind": "dpo", "base_model": base_model or path, "base_model_path": path, "lineage": LINEAGE,
            "metrics": {"final_accuracy": 0.75}}
    out = save_checkpoint(model, tok, tmp_path / "ckpt", meta, merge_lora=False)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == portable
    assert str(tmp_path) not in (out / "adapter_config.json").read_text()
    saved_meta = json.loads((out / "meta.json").read_text())
    assert saved_meta["base_model_path"] == path and saved_meta["base_model_id"] == portable

    ids = torch.tensor([[2, 30, 31, 32, 3]])
    reloaded, _, _ = load_checkpoint(out)  # the local path in meta.json still finds the base
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == (portable if "/" in portable else None) and card.data.library_name == "peft"
    assert f"| base model | {portable} |" in card.text
    assert "cd" * 32 in card.text and "demo" in card.text and "0.75" in card.text


def test_a_merged_checkpoint_has_a_transformers_card_with_its_lineage(tiny: Path, tmp_path: Path) -> None:
    model, tok, path = _adapter_policy(tiny)
    meta = {"kind": "ppo", "base_model": path, "lineage": {**LINEAGE, "kind": "ppo", "reward_model_version": 3}}
    out = save_checkpoint(model, tok, tmp_path / "ckpt", meta)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "| base model | llama |" in card.text
    assert "ppo" in card.data.tags and "| reward model version | 3 |" in card.text
    assert str(tmp_path) not in (out / "README.md").read_text()


def test_portable_ids_of_hub_ids_aliases_and_folders(tiny: Path) -> None:
    assert portable_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert portable_model_id("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_model_id(str(tiny)) == "llama"
    assert portable_model_id("") is None


def test_an_adapter_trained_on_another_host_loads_over_its_base_by_name(tiny: Path, tmp_path: Path) -> None:
    """meta.json's base_model_path is the training host's folder; elsewhere the base loads by its name."""
    model, tok, path = _adapter_policy(tiny)
    meta = {"kind": "dpo", "base_model": path, "base_model_path": str(tmp_path / "gone" / "llama")}
    out = save_checkpoint(model, tok, tmp_path / "ckpt", meta, merge_lora=False)
    reloaded, _, _ = load_checkpoint(out)
    ids = torch.tensor([[2, 30, 31, 32, 3]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
