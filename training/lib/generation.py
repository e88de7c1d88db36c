"""Sample chat completions from a local causal LM, in batches, reproducibly.

``generate_local(config, prompts, progress)`` is the whole API: a frozen
``GenerationConfig``, prompts already read from a file (each one a list of chat
messages), an optional progress callback; a list of ``GeneratedText`` back, one
per prompt, in input order.

Pure module: never imports Django or Celery. torch and transformers are
imported inside ``generate_local`` so importing this module stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rewardmodel.lib.backbones import resolve_model

__all__ = ["GeneratedText", "GenerationConfig", "Message", "Progress", "eos_token_ids", "generate_local", "read_prompts", "render_prompt"]

Message = Mapping[str, str]
"""One chat turn: ``{"role": "system" | "user" | "assistant", "content": str}``."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: prompts finished so far, and how many there are."""

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample.

    ``model`` is anything ``resolve_model`` accepts (an alias such as
    ``"smollm2"``, a local folder, a hub id). ``temperature == 0`` means greedy
    decoding (``top_p`` is then ignored). ``seed`` seeds torch before each batch
    (see ``GeneratedText.seed``). ``batch_size`` bounds the prompts sampled
    together; larger is faster per token and costs memory and padding.
    """

    model: str
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")

    def sampling_params(self) -> dict[str, Any]:
        """What decides the text, as recorded on each completion (device and dtype excluded)."""
        params = asdict(self)
        for key in ("device", "dtype", "seed"):
            params.pop(key)
        return params


@dataclass(frozen=True)
class GeneratedText:
    """One completion.

    ``text`` is the decoded new tokens with special tokens dropped and outer
    whitespace stripped. ``params`` is ``GenerationConfig.sampling_params()``.
    ``seed`` is the torch seed set just before this prompt's batch
    (``config.seed + batch index``): rerunning the same config on the same
    prompt list reproduces the text on the same hardware, while a different
    prompt list may batch this prompt differently. ``tokens`` counts the new
    tokens up to and including the first end-of-sequence token (or all of them
    when the model ran out of ``max_new_tokens``).
    """

    text: str
    params: dict[str, Any]
    seed: int
    tokens: int


def generate_local(
    config: GenerationConfig,
    prompts: Sequence[Sequence[Message]],
    progress: Progress | None = None,
) -> list[GeneratedText]:
    """Sample one completion per prompt; return them in the order of ``prompts``.

    Preconditions: every prompt is a non-empty list of ``{"role", "content"}``
    messages the model's chat template accepts, normally ending with a user
    turn; the model folder has a tokenizer with a chat template.

    Each prompt is rendered with ``add_generation_prompt=True``. Prompts are
    sorted by token length and cut into batches of ``config.batch_size`` so
    that a batch pads little; padding is on the left so every row's new tokens
    start at the same column. ``progress(done, total)`` is called after each
    batch, the last time with ``done == total == len(prompts)``.
    """
    import torch

    total = len(prompts)
    if total == 0:
        return []
    path = resolve_model(config.model)
    tokenizer, model = _load(path, config)

    rendered = [render_prompt(tokenizer, messages) for messages in prompts]
    # One tokenization pass for the lengths; the batches tokenize again with padding.
    lengths = [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    order = sorted(range(total), key=lambda index: lengths[index])
    eos_ids = eos_token_ids(tokenizer, model)
    params = config.sampling_params()
    # top_k=None switches off transformers' default top_k=50, so the sampling is
    # exactly what `params` records: temperature and nucleus (top_p) only.
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": None}
        if config.temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )

    results: list[GeneratedText | None] = [None] * total
    done = 0
    for batch_index, start in enumerate(range(0, total, config.batch_size)):
        indices = order[start : start + config.batch_size]
        batch = tokenizer(
            [rendered[i] for i in indices], add_special_tokens=False, padding=True, return_tensors="pt"
        ).to(config.device)
        seed = config.seed + batch_index
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = model.generate(
                **batch,
                max_new_tokens=config.max_new_tokens,
                eos_token_id=eos_ids,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        # output: (batch, prompt_len + new_len); rows finished early are padded on the right.
        new_tokens = output[:, batch["input_ids"].shape[1] :].cpu()
        for row, index in enumerate(indices):
            ids = new_tokens[row].tolist()
            count = _count_until_eos(ids, eos_ids)
            text = tokenizer.decode(ids[:count], skip_special_tokens=True).strip()
            results[index] = GeneratedText(text=text, params=dict(params), seed=seed, tokens=count)
        done += len(indices)
        if progress is not None:
            progress(done, total)
    return [result for result in results if result is not None]


def _load(path: str, config: GenerationConfig) -> tuple[Any, Any]:
    """Tokenizer padded on the left, and the model in eval mode on ``config.device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        # The attention mask hides padding, so any token will do; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, config.dtype))
    model.to(config.device).eval()
    return tokenizer, model


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The chat-template text of a conversation, ending where the assistant's answer starts."""
    if not messages:
        raise ValueError("a prompt needs at least one message")
    return tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        add_generation_prompt=True,
        tokenize=False,
    )


def eos_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS and the model's generation-config EOS (one or many)."""
    ids: list[int] = []
    configured = model.generation_config.eos_token_id
    for candidate in [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]:
        if candidate is not None and candidate not in ids:
            ids.append(int(candidate))
    if not ids:
        raise ValueError("the tokenizer and model name no end-of-sequence token")
    return ids


def _count_until_eos(ids: list[int], eos_ids: list[int]) -> int:
    for position, token in enumerate(ids):
        if token in eos_ids:
            return position + 1
    return len(ids)



def read_prompts(path: str | Path) -> list[list[Message]]:
    """Chat-message lists from a JSONL file; a ValueError names the line and the field that is wrong.

    Each line: ``{"prompt": str | [messages]}``, ``{"messages": [messages]}`` or a bare
    list of ``{"role", "content"}`` messages; a string is one user turn.
    """
    prompts: list[list[Message]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number}: not valid JSON ({error.msg})") from None
            if isinstance(row, list):  # a bare list of messages
                row = {"messages": row}
            if not isinstance(row, dict):
                raise ValueError(f"line {number}: expected a JSON object or a list of messages")
            field = "messages" if "messages" in row else "prompt"
            value = row.get(field)
            if isinstance(value, str) and value.strip():
                prompts.append([{"role": "user", "content": value}])
            elif (isinstance(value, list) and value and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value)):
                prompts.append([{"role": m["role"], "content": m["content"]} for m in value])
            else:
                raise ValueError(f"line {number}, field {field!r}: a non-empty string or a list of "
                                 '{"role", "content"} messages is required')
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


if __name__ == "__main__":
    from training.lib.generation_cli import main

    raise SystemExit(main())
