"""Tiny offline models for the tests and the smoke benchmarks: random, two layers, hidden size 32.

Tokenizers are word-level, built with the `tokenizers` library; nothing is downloaded.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rewardmodel.lib.data import PreferencePair

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


def save_tiny_bert(folder: Path, *, seed: int = 0, **sizes: int) -> Path:
    """A random BERT; `sizes` override the tiny dimensions (hidden_size=384, num_attention_heads=12: MiniLM's)."""
    tok = bert_tokenizer()
    torch.manual_seed(seed)
    dims = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, **sizes}
    config = BertConfig(vocab_size=len(tok), max_position_embeddings=512, pad_token_id=tok.pad_token_id, **dims)
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


def save_tiny_llama_bf16(folder: Path, *, chat: bool = False, seed: int = 0) -> Path:
    """`save_tiny_llama`'s model and tokenizer, saved in bf16 (config.json says "bfloat16")."""
    tok = llama_tokenizer(chat)
    torch.manual_seed(seed)
    LlamaForCausalLM(llama_config(tok)).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_bert_bf16(folder: Path, *, seed: int = 0) -> Path:
    """`save_tiny_bert`'s model and tokenizer (default sizes), saved in bf16."""
    save_tiny_bert(folder, seed=seed)
    BertModel.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(folder)
    return folder


def safetensors_dtypes(folder: Path) -> set[str]:
    """The dtypes ("BF16", "F32", ...) of every tensor in a safetensors file, or a folder's, read from their headers."""
    import json
    import struct

    found: set[str] = set()
    files = [Path(folder)] if Path(folder).is_file() else Path(folder).glob("*.safetensors")
    for file in files:
        with file.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        found |= {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}
    return found
