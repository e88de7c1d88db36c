"""Generation through any OpenAI-compatible chat endpoint (a vLLM server, a provider).

Pure: no Django. The key comes from an environment variable named in the config,
never from the config itself, so configs can be stored and shown safely.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from training.lib.generation import GeneratedText

Message = dict[str, str]
Progress = Callable[[int, int], None]
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """The endpoint refused or kept failing; the message says what it answered."""


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to ask.

    base_url: e.g. ``http://127.0.0.1:8001/v1`` (the ``/chat/completions`` path is appended).
    api_key_env: name of the environment variable holding the key ("" for none).
    concurrency: requests in flight at once; retries: extra attempts on 429/5xx/timeouts,
    with exponential back-off from ``backoff_s``.
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 1.0
    concurrency: int = 4

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}


def chat_once(client: httpx.Client, config: EndpointConfig, messages: Sequence[Message], *, seed: int,
              max_tokens: int | None = None, temperature: float | None = None) -> tuple[str, int]:
    """One chat completion with retries; returns (text, completion tokens)."""
    body: dict[str, Any] = {
        "model": config.model,
        "messages": list(messages),
        "temperature": config.temperature if temperature is None else temperature,
        "top_p": config.top_p,
        "max_tokens": max_tokens or config.max_new_tokens,
        "seed": seed,
    }
    url = config.base_url.rstrip("/") + "/chat/completions"
    last = ""
    for attempt in range(config.retries + 1):
        try:
            response = client.post(url, json=body, headers=config.headers(), timeout=config.timeout_s)
        except httpx.TransportError as error:  # connection refused, timeouts
            last = f"{type(error).__name__}: {error}"
        else:
            if response.status_code == 200:
                data = response.json()
                try:
                    text = data["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError):
                    raise EndpointError(f"{url} answered without choices[0].message.content: {str(data)[:200]}") from None
                return text, int((data.get("usage") or {}).get("completion_tokens") or 0)
            last = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code not in RETRY_STATUSES:
                break
        if attempt < config.retries:
            time.sleep(config.backoff_s * (2**attempt) * (0.5 + random.random()))
    raise EndpointError(f"{url} failed for model {config.model!r}: {last}")


def generate_endpoint(
    config: EndpointConfig, prompts: Sequence[Sequence[Message]], progress: Progress | None = None
) -> list[GeneratedText]:
    """One completion per prompt, in input order, at most ``concurrency`` requests at a time."""
    total = len(prompts)
    done = 0
    params = {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
              "endpoint": config.base_url, "model": config.model}

    with httpx.Client() as client, ThreadPoolExecutor(max_workers=max(1, config.concurrency)) as pool:
        futures = [pool.submit(chat_once, client, config, p, seed=config.seed + i) for i, p in enumerate(prompts)]
        results: list[GeneratedText] = []
        for i, future in enumerate(futures):
            text, tokens = future.result()
            results.append(GeneratedText(text=text, params=params, seed=config.seed + i, tokens=tokens))
            done += 1
            if progress:
                progress(done, total)
    return results
