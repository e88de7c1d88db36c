"""The ``trl`` export is what TRL reads: it loads with ``datasets`` unchanged and trains one step
of ``RewardTrainer`` and of ``DPOTrainer`` on a tiny random Llama (no downloads)."""
from __future__ import annotations

import json
import math

import pytest

from annotate import services
from annotate.exports import write_export
from annotate.models import Membership
from annotate.votes import vote_record
from tests.conftest import PASSWORD, make_comparisons

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def tiny_model(folder, corpus: list[str]) -> str:
    """A byte-level BPE tokenizer trained on ``corpus`` and a 2-layer, 32-wide random Llama, saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def train_args(config_class, output_dir, **extra):
    return config_class(
        output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to="none", bf16=False, use_cpu=True, gradient_checkpointing=False, save_strategy="no",
        logging_steps=1, dataloader_num_workers=0, max_length=128, **extra,
    )


def test_trl_export_loads_unchanged_and_trains_reward_and_dpo_one_step(project, annotator, tmp_path):
    voters = [annotator] + [
        services.user_with_role(project=project, username=f"v{i}", password=PASSWORD, role=Membership.Role.ANNOTATOR)
        for i in range(2)
    ]
    project.votes_per_comparison = 3
    project.save(update_fields=["votes_per_comparison"])
    comparisons = make_comparisons(project, 6, texts=("The answer is short", "A longer answer that rambles"))
    for i, comparison in enumerate(comparisons):
        choices = ["tie"] * 3 if i == 5 else ["a", "a", "b"] if i % 2 else ["b", "b", "b"]
        for voter, choice in zip(voters, choices, strict=True):
            strength = None if choice == "tie" else 2
            vote_record(annotator=voter, comparison_id=comparison.pk, choice=choice, strength=strength)

    path = tmp_path / "prefs.jsonl"
    assert write_export(project=project, fmt="trl", path=path) == 5  # the all-tie comparison is left out
    written = [json.loads(line) for line in path.read_text().splitlines()]
    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    assert dataset.column_names == ["prompt", "chosen", "rejected", "margin"]
    assert dataset.to_list() == written
    assert set(dataset["margin"]) == {0.5}

    corpus = [row[key] for row in written for key in ("prompt", "chosen", "rejected")]
    model = tiny_model(tmp_path / "tiny-llama", corpus)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)

    reward = trl.RewardTrainer(
        model=model, args=train_args(trl.RewardConfig, tmp_path / "rm"), train_dataset=dataset,
        processing_class=tokenizer,
    )
    reward_loss = reward.train().training_loss
    assert math.isfinite(reward_loss) and reward_loss > 0  # a finite, positive Bradley–Terry loss

    dpo = trl.DPOTrainer(
        model=model, args=train_args(trl.DPOConfig, tmp_path / "dpo", beta=0.1), train_dataset=dataset,
        processing_class=tokenizer,
    )
    dpo_loss = dpo.train().training_loss
    assert math.isfinite(dpo_loss) and dpo_loss > 0
