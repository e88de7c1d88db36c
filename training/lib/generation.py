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
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rewardmodel.lib.backbones import resolve_model

__all__ = ["GeneratedText", "GenerationConfig", "Message", "Progress", "eos_token_ids", "generate_local", "read_prompts",
           "render_prompt", "resolve_device", "resolve_dtype"]

Message = Mapping[str, str]
"""One chat turn: ``{"role": "system" | "user" | "assistant", "content": str}``."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: prompts finished so far, and how many there are."""

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
_KV_CACHES = ("dynamic", "static")


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample.

    ``model`` is anything ``resolve_model`` accepts (an alias such as
    ``"smollm2"``, a local folder, a hub id). ``temperature == 0`` means greedy
    decoding (``top_p`` is then ignored). ``seed`` seeds torch before each batch
    (see ``GeneratedText.seed``). ``batch_size`` bounds the prompts sampled
    together; larger is faster per token and costs memory and padding.

    ``device`` and ``dtype`` say where the model runs; "auto" is resolved when
    the model is loaded (``resolve_device``, ``resolve_dtype``) and the values
    used are on each ``GeneratedText``. ``kv_cache="static"`` preallocates the
    key/value cache for the longest batch, which on CUDA lets transformers
    compile the decoding step (``torch.compile``, CUDA graphs); "dynamic" is the
    plain growing cache. None of the three is a sampling parameter.
    """

    model: str
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    kv_cache: str = "dynamic"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.kv_cache not in _KV_CACHES:
            raise ValueError(f"kv_cache must be one of {', '.join(_KV_CACHES)}, got {self.kv_cache!r}")

    def sampling_params(self) -> dict[str, Any]:
        """What decides the text, as recorded on each completion (where and how it ran excluded)."""
        params = asdict(self)
        for key in ("device", "dtype", "kv_cache", "seed"):
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
    when the model ran out of ``max_new_tokens``). ``device`` and ``dtype`` are
    where the model ran and in what precision, "auto" resolved (None from an
    endpoint).
    """

    text: str
    params: dict[str, Any]
    seed: int
    tokens: int
    device: str | None = None
    dtype: str | None = None


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
    batch, the last time with ``done == total == len(prompts)``. A device the
    process cannot use (``"cuda"`` without a GPU) is a ValueError before the
    model is read.
    """
    import torch

    total = len(prompts)
    if total == 0:
        return []
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    path = resolve_model(config.model)
    tokenizer, model = _load(path, device, dtype)

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
    if config.kv_cache == "static":
        # One cache size for every batch (the longest prompt plus the new tokens), so the decoding
        # step that transformers compiles on CUDA keeps one shape instead of recompiling per batch.
        sampling.update(cache_implementation="static", max_cache_len=max(lengths) + config.max_new_tokens)

    results: list[GeneratedText | None] = [None] * total
    done = 0
    for batch_index, start in enumerate(range(0, total, config.batch_size)):
        indices = order[start : start + config.batch_size]
        batch = tokenizer(
            [rendered[i] for i in indices], add_special_tokens=False, padding=True, return_tensors="pt"
        ).to(device)
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
            results[index] = GeneratedText(text=text, params=dict(params), seed=seed, tokens=count,
                                           device=device, dtype=dtype)
        done += len(indices)
        if progress is not None:
            progress(done, total)
    return [result for result in results if result is not None]


def resolve_device(device: str) -> str:
    """The device to run on: "auto" is "cuda" when this process sees a CUDA GPU, else "cpu".

    An explicit device passes through once it is usable here; one that is not
    (no GPU, a GPU index past the last, no MPS) is a ValueError naming it.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ValueError(f"device={device!r}, but this process sees {count} CUDA GPU(s)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps', but MPS (Apple GPU) is not available here")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """The weights' dtype on ``device`` (already resolved): "auto" picks the fastest safe one.

    On a CUDA GPU with native bf16 (compute capability 8.0 or later: A100, L4,
    H100, ...; or ROCm's answer) that is "bfloat16", the dtype today's models are
    trained in; an older GPU (T4, V100) has fp16 tensor cores but emulates bf16,
    so "float16" there. MPS: "float16". The CPU: "float32", because bf16/fp16
    matmuls on a CPU without bf16 instructions are emulated and much slower.
    An explicit dtype passes through.
    """
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        native_bf16 = (torch.cuda.is_bf16_supported() if torch.version.hip
                       else torch.cuda.get_device_capability(device)[0] >= 8)
        return "bfloat16" if native_bf16 else "float16"
    return "float16" if device == "mps" else "float32"


def _load(path: str, device: str, dtype: str) -> tuple[Any, Any]:
    """Tokenizer padded on the left, and the model in eval mode on ``device`` in ``dtype`` (both resolved)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        # The attention mask hides padding, so any token will do; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.to(device).eval()
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
