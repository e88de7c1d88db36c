"""Tiny offline backbones for the reward-model library tests, and data/format tests.

Models are random, two layers, hidden size 32; tokenizers are word-level,
built with the `tokenizers` library; nothing is downloaded.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.data import PairCollator, PairFormatter, PreferencePair, parse_pair, split_by_prompt

WORDS = (
    "good bad the a cat dog is was very not and it said hello world yes no maybe "
    "Human Assistant System : . , ? ! user assistant"
).split() + [f"q{i}" for i in range(64)] + [f"w{i}" for i in range(32)]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _word_tokenizer(specials: list[str], single: str, pair: str, **named: str) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token=named.get("unk_token", "<unk>")))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(specials)
    raw.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in specials if t in single + pair]
    )
    return PreTrainedTokenizerFast(tokenizer_object=raw, **named)


def llama_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = _word_tokenizer(specials, "<s> $A", "<s> $A $B:1", bos_token="<s>", eos_token="</s>",
                          pad_token="<pad>", unk_token="<unk>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def bert_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return _word_tokenizer(specials, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", cls_token="[CLS]",
                           sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")


def llama_config(tok: PreTrainedTokenizerFast, **extra: object) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra,
    )


def save_tiny_llama(folder: Path, *, chat: bool = False, seed: int = 0) -> Path:
    tok = llama_tokenizer(chat)
    torch.manual_seed(seed)
    LlamaForCausalLM(llama_config(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_bert(folder: Path, *, seed: int = 0) -> Path:
    tok = bert_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=512, pad_token_id=tok.pad_token_id,
    )
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def counting_pairs(n_prompts: int, per_prompt: int, *, noise: float, seed: int, ties: bool = False,
                   length: int = 8) -> list[PreferencePair]:
    """Responses of `length` words; the true preference is more "good" tokens.

    A fraction `noise` of non-tie labels is flipped, so the best possible
    held-out accuracy is 1 - noise. With `ties`, equal counts become tie pairs.
    """
    rng = random.Random(seed)
    fillers = ["the", "cat", "dog", "is", "was", "very", "and", "it"]
    pairs = []
    for prompt_id in range(n_prompts):
        prompt = " ".join(rng.choice(WORDS[-96:]) for _ in range(rng.randint(2, 6)))
        made = 0
        while made < per_prompt:
            a, b = (" ".join("good" if rng.random() < rng.random() else rng.choice(fillers) for _ in range(length))
                    for _ in range(2))
            ca, cb = a.split().count("good"), b.split().count("good")
            if ca == cb and not ties:
                continue
            tie = ca == cb
            chosen, rejected = (a, b) if ca > cb else (b, a)
            if not tie and rng.random() < noise:
                chosen, rejected = rejected, chosen
            strength = None if tie else min(3, abs(ca - cb))
            pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, tie=tie,
                                        strength=strength, agreement=1 - noise, prompt_id=prompt_id))
            made += 1
    return pairs


def test_parse_accepts_snapshot_and_trl_formats() -> None:
    ours = parse_pair({"prompt_id": 17, "prompt": [{"role": "user", "content": "hi"}], "chosen": "a",
                       "rejected": "b", "tie": False, "strength": 2, "annotators": 3, "agreement": 0.67})
    assert (ours.strength, ours.annotators, ours.agreement, ours.margin_value(1.0)) == (2, 3, 0.67, 0.5)
    trl = parse_pair({"prompt": [{"role": "user", "content": "hi"}],
                      "chosen": [{"role": "assistant", "content": "yes"}],
                      "rejected": [{"role": "assistant", "content": "no"}], "margin": 1.5})
    assert (trl.chosen, trl.rejected, trl.margin_value(1.0), trl.tie) == ("yes", "no", 1.5, False)
    hh = parse_pair({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"})
    assert (hh.prompt, hh.chosen, hh.rejected) == ("\n\nHuman: hi\n\nAssistant:", " hello", " go")
    implicit = parse_pair({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                           "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]})
    assert (implicit.prompt, implicit.chosen) == ([{"role": "user", "content": "hi"}], "yo")


def test_split_is_by_prompt_never_by_pair() -> None:
    pairs = counting_pairs(40, 3, noise=0.0, seed=1)
    train, held_out = split_by_prompt(pairs, 0.25, seed=3)
    assert {p.prompt_id for p in train}.isdisjoint({p.prompt_id for p in held_out})
    assert len(held_out) == 30 and len(train) + len(held_out) == len(pairs)


def test_encoder_pair_template_and_causal_eos() -> None:
    pair = PreferencePair(prompt="hello world", chosen="yes", rejected="no no")
    enc = PairFormatter(bert_tokenizer(), causal=False).encode([pair], 64)[0]
    tok = bert_tokenizer()
    assert enc.prompt_ids + enc.chosen_ids == tok("hello world", "yes")["input_ids"]
    llama = llama_tokenizer()
    enc = PairFormatter(llama, causal=True).encode([pair], 64)[0]
    assert enc.prompt_ids[0] == llama.bos_token_id and enc.chosen_ids[-1] == llama.eos_token_id


def test_chat_template_shares_the_prompt_and_ends_the_turn() -> None:
    tok = llama_tokenizer(chat=True)
    pair = PreferencePair(prompt=[{"role": "user", "content": "hello"}], chosen="yes", rejected="no")
    enc = PairFormatter(tok, causal=True).encode([pair], 64)[0]
    assert tok.convert_ids_to_tokens(enc.prompt_ids) == ["<s>", "<|user|>", "hello", "<|end|>", "<|assistant|>"]
    assert tok.convert_ids_to_tokens(enc.chosen_ids) == ["yes", "<|end|>"]


def test_collator_pads_dynamically_and_indexes_last_tokens() -> None:
    tok = llama_tokenizer()
    pairs = [PreferencePair(prompt="hello", chosen="yes yes yes yes yes yes", rejected="no"),
             PreferencePair(prompt="hello world", chosen="yes", rejected="no no")]
    encoded = PairFormatter(tok, causal=True).encode(pairs, 64)
    batch = PairCollator(tok.pad_token_id)(encoded)
    assert batch.input_ids.shape == (4, 9)  # <s> hello yes yes yes yes yes yes </s>
    flat = batch.input_ids.flatten()
    assert (flat[batch.last_index] == tok.eos_token_id).all()
    assert batch.padded_tokens == 36 and batch.computed_tokens == 9 + 4 + 5 + 6 and batch.position_ids is None
    packed = PairCollator(tok.pad_token_id, pack=True)(encoded)
    assert packed.padded_tokens == packed.computed_tokens == 24  # all four fit one row of 24, no padding
    mask = packed.attention_mask[0, 0]
    assert mask[8, :9].all() and not mask[9, :9].any() and not mask[7, 8]  # separate, causal sequences
    assert (packed.input_ids.flatten()[packed.last_index] == tok.eos_token_id).all()


def test_cpu_runs_fp32_unless_bf16_is_asked_for_and_native(monkeypatch: pytest.MonkeyPatch) -> None:
    from rewardmodel.lib import config as config_module

    cpu = torch.device("cpu")
    assert config_module.resolve_autocast_dtype(RewardConfig(backbone="x"), cpu) is None
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16"):
        config_module.resolve_autocast_dtype(RewardConfig(backbone="x", dtype="bf16"), cpu)
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: True)
    assert config_module.resolve_autocast_dtype(RewardConfig(backbone="x", dtype="bf16"), cpu) == torch.bfloat16
    assert not config_module.resolve_compile(RewardConfig(backbone="x"), cpu)
    with pytest.raises(ValueError, match="ensemble_size"):
        RewardConfig(backbone="x", ensemble_size=0)
