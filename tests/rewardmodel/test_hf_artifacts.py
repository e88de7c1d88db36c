"""Saved reward models load where users load them: transformers' AutoModelForSequenceClassification and
TRL give the project's rewards; folders saved in the old layout still load; every folder has a model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.model import HEAD_FILE, load_reward_model
from rewardmodel.lib.score import score_with_uncertainty
from rewardmodel.lib.train import train_reward_model
from tests.tiny import counting_pairs, save_tiny_bert, save_tiny_llama

PROMPTS = ["hello world", "the cat is", "q1 q2 q3 q4 q5 q6 q7", "it was"]
COMPLETIONS = [" good good yes", " bad", " a dog and a cat said hello", " maybe not"]


def _train(backbone: Path, out: Path, **overrides: object) -> Path:
    config = RewardConfig(backbone=str(backbone), learning_rate=3e-3, epochs=1, batch_size=16, eval_fraction=0.25,
                          num_threads=1, **overrides)
    train_reward_model(config, counting_pairs(24, 2, noise=0.0, seed=3), out, snapshot_sha256="ab" * 32)
    return out


def _hf_rewards(folder: Path, ids: list[list[int]], *, padding_side: str) -> torch.Tensor:
    """[N, K] logits of transformers' own class on one padded batch of the project's token ids."""
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = padding_side
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tok.pad({"input_ids": ids}, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_transformers_gives_the_projects_rewards_for_every_head(tmp_path: Path, padding_side: str) -> None:
    out = _train(save_tiny_llama(tmp_path / "llama"), tmp_path / "rm", ensemble_size=3)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 3
    assert not (out / HEAD_FILE).exists()

    ours = load_reward_model(out)
    means, _ = score_with_uncertainty(ours, PROMPTS, COMPLETIONS, batch_size=4)
    ids = ours.formatter.encode_for_scoring(PROMPTS, COMPLETIONS, ours.max_length)
    assert len({len(s) for s in ids}) > 1  # the batch really is padded
    with torch.no_grad():  # the project's per-head rewards, one unpadded sequence at a time
        per_head = torch.cat([ours(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long),
                                   last_index=torch.tensor([len(s) - 1])) for s in ids])
    logits = _hf_rewards(out, ids, padding_side=padding_side)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(logits, per_head, atol=1e-5, rtol=1e-5)
    assert logits.mean(-1).tolist() == pytest.approx(means, abs=1e-5)
    assert float(per_head.std(0).max()) > 1e-3  # distinct rewards: a wrong token or head would show


def test_bert_reward_model_loads_as_bert_for_sequence_classification(tmp_path: Path) -> None:
    out = _train(save_tiny_bert(tmp_path / "bert"), tmp_path / "rm")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    ours = load_reward_model(out)
    means, _ = score_with_uncertainty(ours, PROMPTS, COMPLETIONS)
    ids = ours.formatter.encode_for_scoring(PROMPTS, COMPLETIONS, ours.max_length)
    logits = _hf_rewards(out, ids, padding_side="right")
    assert logits[:, 0].tolist() == pytest.approx(means, abs=1e-5)


def test_trl_reward_trainer_loads_the_saved_model_with_its_head(tmp_path: Path) -> None:
    """TRL's path: a model id string, AutoModelForSequenceClassification(num_labels=1), the saved tokenizer."""
    datasets = pytest.importorskip("datasets")
    from trl import RewardConfig as TRLConfig
    from trl import RewardTrainer

    out = _train(save_tiny_llama(tmp_path / "llama"), tmp_path / "rm")
    ours = load_reward_model(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = ours.formatter.encode_for_scoring(PROMPTS, COMPLETIONS, ours.max_length)
    texts = [tok.decode(s, skip_special_tokens=True) for s in ids]  # TRL adds BOS and EOS itself
    rows = [{"chosen": texts[i], "rejected": texts[i - 1]} for i in range(len(texts))]
    trainer = RewardTrainer(
        model=str(out),
        args=TRLConfig(output_dir=str(tmp_path / "trl"), bf16=False, report_to="none", use_cpu=True),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    assert len({int(n) for n in batch["attention_mask"].sum(1)}) > 1  # a padded batch
    with torch.no_grad():
        trl_rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        expected = [float(ours(row[mask.bool()][None], mask[mask.bool()][None],
                               last_index=mask.sum().reshape(1) - 1)[0, 0])
                    for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    assert trl_rewards.tolist() == pytest.approx(expected, abs=1e-5)
    assert batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist() == ids[0]  # TRL kept our format


def test_a_folder_in_the_old_layout_still_loads_with_the_same_rewards(tmp_path: Path) -> None:
    """Folders saved before this layout (backbone files + reward_head.safetensors) keep loading."""
    out = _train(save_tiny_llama(tmp_path / "llama"), tmp_path / "rm", ensemble_size=2)
    new = load_reward_model(out)
    expected, _ = score_with_uncertainty(new, PROMPTS, COMPLETIONS)
    old = tmp_path / "old"
    new.backbone.save_pretrained(old)
    new.tokenizer.save_pretrained(old)
    save_file({"head.weight": new.head.weight.detach().contiguous(), "tie_param": torch.zeros(1)}, str(old / HEAD_FILE))
    meta = json.loads((out / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "format": "rewardmodel.lib/1"}))
    reloaded = load_reward_model(old)
    assert score_with_uncertainty(reloaded, PROMPTS, COMPLETIONS)[0] == pytest.approx(expected, abs=1e-6)
    assert float(torch.tensor(expected).std()) > 1e-3


def test_mean_pooling_keeps_the_head_file_and_says_so_in_its_card(tmp_path: Path) -> None:
    out = _train(save_tiny_bert(tmp_path / "bert"), tmp_path / "rm", pooling="mean")
    assert (out / HEAD_FILE).exists()
    card = ModelCard.load(out / "README.md")
    assert "not a transformers sequence-classification checkpoint" in card.text
    assert load_reward_model(out).pooling == "mean"


def test_reward_model_card_names_base_snapshot_and_metrics(tmp_path: Path) -> None:
    out = _train(save_tiny_llama(tmp_path / "llama"), tmp_path / "rm", ensemble_size=3)
    meta = json.loads((out / "meta.json").read_text())
    card = ModelCard.load(out / "README.md")  # the Hub's own parser reads the front matter
    assert card.data.library_name == "transformers" and "reward-model" in card.data.tags
    assert card.data.base_model is None  # a local folder has no hub id: the Hub would reject its name here
    assert "| base model | llama |" in card.text  # the folder's name, never an absolute local path
    assert str(tmp_path) not in (out / "README.md").read_text()
    assert "ab" * 32 in card.text
    assert f"{meta['metrics']['eval_accuracy']:.4g}" in card.text
    assert "logits.mean(-1)" in card.text


def test_a_one_head_folder_has_the_weight_names_openrlhf_reads(tmp_path: Path) -> None:
    """OpenRLHF (value_head_prefix="score"): the backbone under its base_model_prefix and score.weight [1, H];
    the reward at the last attended token, which is the token the project reads."""
    from safetensors import safe_open

    out = _train(save_tiny_llama(tmp_path / "llama"), tmp_path / "rm")
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
        head = handle.get_tensor("score.weight")
    assert head.shape == (1, 32) and head.dtype == torch.float32
    assert names - {"score.weight"} and all(n.startswith("model.") for n in names - {"score.weight"})
    ours = load_reward_model(out)
    ids = ours.formatter.encode_for_scoring(PROMPTS, COMPLETIONS, ours.max_length)
    width = max(len(s) for s in ids)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
    batch = torch.tensor([s + [0] * (width - len(s)) for s in ids])
    with torch.no_grad():  # OpenRLHF's reading: hidden states @ head, at the last position the mask keeps
        hidden = ours.backbone(input_ids=batch, attention_mask=mask).last_hidden_state
        values = (hidden.float() @ head.T).squeeze(-1)
        last = mask.shape[1] - 1 - mask.fliplr().argmax(dim=1)
        rewards = values.gather(1, last[:, None]).squeeze(1)
    assert rewards.tolist() == pytest.approx(score_with_uncertainty(ours, PROMPTS, COMPLETIONS)[0], abs=1e-5)


def test_a_tokenizer_that_pads_with_eos_gets_a_pad_token_the_head_skips(tmp_path: Path) -> None:
    """Plain-format texts end in EOS: were EOS the pad token, transformers would read the token before it."""
    backbone = save_tiny_llama(tmp_path / "llama")
    tok = AutoTokenizer.from_pretrained(backbone)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(backbone)
    out = _train(backbone, tmp_path / "rm")
    saved = AutoTokenizer.from_pretrained(out)
    pad = json.loads((out / "config.json").read_text())["pad_token_id"]
    assert pad == saved.pad_token_id != saved.eos_token_id
    ours = load_reward_model(out)
    ids = ours.formatter.encode_for_scoring(PROMPTS, COMPLETIONS, ours.max_length)
    assert all(s[-1] == saved.eos_token_id for s in ids)
    means, _ = score_with_uncertainty(ours, PROMPTS, COMPLETIONS)
    assert _hf_rewards(out, ids, padding_side="right")[:, 0].tolist() == pytest.approx(means, abs=1e-5)
