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


def vote_mixed(project, annotator, n: int = 8) -> None:
    """n comparisons, three voters each: clear preferences (strength 2), one all-tie, one all-both-bad."""
    voters = [annotator] + [
        services.user_with_role(project=project, username=f"v{i}", password=PASSWORD, role=Membership.Role.ANNOTATOR)
        for i in range(2)
    ]
    project.votes_per_comparison = 3
    project.save(update_fields=["votes_per_comparison"])
    comparisons = make_comparisons(project, n, texts=("The answer is short", "A longer answer that rambles"))
    for i, comparison in enumerate(comparisons):
        choices = {n - 1: ["tie"] * 3, n - 2: ["both_bad"] * 3}.get(i, ["a", "a", "b"] if i % 2 else ["b"] * 3)
        for voter, choice in zip(voters, choices, strict=True):
            vote_record(annotator=voter, comparison_id=comparison.pk, choice=choice,
                        strength=2 if choice in ("a", "b") else None)


def export_and_load(project, fmt: str, path, **options):
    """Write the export and load it exactly as the docs say: ``datasets.load_dataset("json", ...)``."""
    count = write_export(project=project, fmt=fmt, path=path, **options)
    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    assert dataset.num_rows == count
    return dataset


def text_corpus(rows: list[dict]) -> list[str]:
    texts = []
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                texts += [m["content"] for m in value if isinstance(m, dict)]
    return texts


def test_pairs_export_is_conversational_throughout_and_trains_reward_and_dpo_without_its_ties(
    project, annotator, tmp_path
):
    from trl.data_utils import is_conversational

    vote_mixed(project, annotator)
    dataset = export_and_load(project, "pairs", tmp_path / "pairs.jsonl")
    assert dataset.num_rows == 7 and sum(dataset["tie"]) == 1  # both-bad left out, the tie kept and marked
    assert all(is_conversational(row) for row in dataset)  # prompt, chosen and rejected are all messages
    preferences = dataset.filter(lambda row: not row["tie"])  # as docs/export-formats.md says: drop ties first
    model = tiny_model(tmp_path / "tiny-llama", text_corpus(dataset.to_list()))
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)

    reward = trl.RewardTrainer(model=model, args=train_args(trl.RewardConfig, tmp_path / "rm"),
                               train_dataset=preferences, processing_class=tokenizer)
    reward_loss = reward.train().training_loss
    assert math.isfinite(reward_loss) and reward_loss > 0
    dpo = trl.DPOTrainer(model=model, args=train_args(trl.DPOConfig, tmp_path / "dpo", beta=0.1),
                         train_dataset=preferences, processing_class=tokenizer)
    dpo_loss = dpo.train().training_loss
    assert math.isfinite(dpo_loss) and dpo_loss > 0


@pytest.mark.parametrize("fmt", ["kto", "kto-conversational"])
def test_kto_export_trains_one_kto_step(project, annotator, tmp_path, fmt):
    vote_mixed(project, annotator)
    dataset = export_and_load(project, fmt, tmp_path / f"{fmt}.jsonl")
    assert dataset.column_names == ["prompt", "completion", "label"]
    # 6 preferences: a desirable and an undesirable row each; both-bad: two undesirable rows; the tie: none.
    assert (dataset.num_rows, sum(dataset["label"])) == (14, 6)
    model = tiny_model(tmp_path / "tiny-llama", text_corpus(dataset.to_list()))
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    desirable = sum(dataset["label"])  # the weighting docs/export-formats.md recommends
    config = train_args(trl.KTOConfig, tmp_path / "kto", beta=0.1,
                        undesirable_weight=desirable / (len(dataset) - desirable))
    kto = trl.KTOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    loss = kto.train().training_loss
    assert math.isfinite(loss) and loss > 0


def test_openrlhf_reads_the_exports_the_way_its_dataset_classes_do(project, annotator, tmp_path):
    """OpenRLHF is not installed here. This reproduces what its loaders read from a row (keys and
    types), for the flags docs/export-formats.md gives: RewardDataset (train_rm, train_dpo) with
    ``--data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected
    --data.apply_chat_template``, and UnpairedPreferenceDataset (train_kto) with
    ``--data.prompt_key prompt --data.output_key completion --data.label_key label``."""
    vote_mixed(project, annotator)
    conversational = export_and_load(project, "trl-conversational", tmp_path / "conv.jsonl").to_list()
    pairs = export_and_load(project, "pairs", tmp_path / "pairs.jsonl").to_list()
    explicit = export_and_load(project, "trl", tmp_path / "trl.jsonl").to_list()
    kto = export_and_load(project, "kto", tmp_path / "kto.jsonl").to_list()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model(tmp_path / "tiny", text_corpus(pairs)))
    render = tokenizer.apply_chat_template

    for row in conversational + pairs:  # with --data.apply_chat_template and --data.prompt_key prompt
        prompt = render(row["prompt"], tokenize=False, add_generation_prompt=True)
        chosen = render(row["prompt"] + row["chosen"], tokenize=False)[len(prompt):]  # list + list
        rejected = render(row["prompt"] + row["rejected"], tokenize=False)[len(prompt):]
        assert chosen == row["chosen"][0]["content"] + "<|end|>"
        assert rejected == row["rejected"][0]["content"] + "<|end|>"
        # Without --data.prompt_key, train_dpo takes the prompt from chosen[:-1]: empty, hence the flag.
        assert row["chosen"][:-1] == []
    for row in explicit:  # plain strings, no chat template: prompt + chosen is the text trained on
        assert all(isinstance(row[key], str) for key in ("prompt", "chosen", "rejected"))
        assert isinstance(row["margin"], float)  # read as the margin when present
    for row in kto:
        assert isinstance(row["prompt"], str) and isinstance(row["completion"], str)
        assert row["label"] in (True, False) and int(row["label"]) in (0, 1)  # OpenRLHF compares labels with 1 / 0
