"""Generation through any OpenAI-compatible chat endpoint (a vLLM server, a provider).

Pure: no Django. The key comes from an environment variable named in the config,
never from the config itself, so configs can be stored and shown safely.

Why a small client on httpx rather than the ``openai`` package: the retry policy is
the part that matters here, and the SDK keeps it private. Its back-off cannot be set
per config (``backoff_s`` is, and tests run it at zero), it honours ``Retry-After``
only up to 60 s and otherwise silently falls back to its own schedule, and it would
add pydantic, anyio, jiter and distro to every worker for one POST. This client
does the three things the SDK would have given us, in the open:

- ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms`` on a retryable
  answer are honoured, capped at ``max_retry_after_s``; without them the wait is
  exponential back-off with jitter.
- It retries 408/409/425/429, any 5xx but 501 and 505, timeouts and refused
  connections; other 4xx answers fail at once (a bad key or model will not heal).
- ``n`` samples of one prompt come from one request (``chat_samples``); a server
  that returns fewer choices than asked is asked again for the rest.
"""
from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import httpx

from training.lib.generation import GeneratedText

Message = dict[str, str]
Progress = Callable[[int, int], None]
RETRY_STATUSES = {408, 409, 425, 429}
NEVER_RETRY_5XX = {501, 505}  # not implemented / version not supported: asking again changes nothing


class EndpointError(RuntimeError):
    """The endpoint refused or kept failing; the message says what it answered."""


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to ask.

    base_url: e.g. ``http://127.0.0.1:8001/v1`` (the ``/chat/completions`` path is appended).
    api_key_env: name of the environment variable holding the key ("" for none).
    concurrency: requests in flight at once; retries: extra attempts on 429/5xx/timeouts,
    with exponential back-off from ``backoff_s`` unless the server sends ``Retry-After``,
    which is obeyed up to ``max_retry_after_s`` seconds.
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
    max_retry_after_s: float = 60.0
    concurrency: int = 4

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}


def should_retry(status: int) -> bool:
    return status in RETRY_STATUSES or (status >= 500 and status not in NEVER_RETRY_5XX)


def retry_after_s(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``Retry-After`` seconds or HTTP date), or None."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # unreadable: fall back to our own back-off
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _wait_s(config: EndpointConfig, attempt: int, response: httpx.Response | None) -> float:
    asked = retry_after_s(response.headers) if response is not None else None
    if asked is not None:
        return min(asked, config.max_retry_after_s)
    return config.backoff_s * (2**attempt) * (0.5 + random.random())


def _post(client: httpx.Client, config: EndpointConfig, body: dict[str, Any]) -> dict:
    """POST one chat-completions request with retries; the decoded JSON of the 200 answer."""
    url = config.base_url.rstrip("/") + "/chat/completions"
    last = ""
    for attempt in range(config.retries + 1):
        response = None
        try:
            response = client.post(url, json=body, headers=config.headers(), timeout=config.timeout_s)
        except httpx.TransportError as error:  # connection refused, timeouts
            last = f"{type(error).__name__}: {error}"
        else:
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise EndpointError(f"{url} answered 200 with a body that is not JSON: "
                                        f"{response.text[:200]}") from None
            last = f"HTTP {response.status_code}: {response.text[:200]}"
            if not should_retry(response.status_code):
                break
        if attempt < config.retries:
            time.sleep(_wait_s(config, attempt, response))
    raise EndpointError(f"{url} failed for model {config.model!r}: {last}")


def chat_samples(client: httpx.Client, config: EndpointConfig, messages: Sequence[Message], *, seed: int, n: int = 1,
                 max_tokens: int | None = None, temperature: float | None = None) -> list[tuple[str, int]]:
    """``n`` chat completions of one conversation, asked for in one request; [(text, completion tokens)].

    The usage a server reports covers all choices of a request; it is shared out evenly
    (the remainder to the first). A server that ignores ``n`` is asked again, with the
    next seeds, until ``n`` texts are in; one that answers without choices is an error.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    url = config.base_url.rstrip("/") + "/chat/completions"
    samples: list[tuple[str, int]] = []
    request = 0
    while len(samples) < n:
        wanted = n - len(samples)
        body: dict[str, Any] = {
            "model": config.model,
            "messages": list(messages),
            "temperature": config.temperature if temperature is None else temperature,
            "top_p": config.top_p,
            "max_tokens": max_tokens or config.max_new_tokens,
            "seed": seed + request,
        }
        if wanted > 1:
            body["n"] = wanted
        data = _post(client, config, body)
        try:
            texts = [choice["message"]["content"] or "" for choice in data["choices"][:wanted]]
        except (KeyError, TypeError):
            texts = []
        if not texts:
            raise EndpointError(f"{url} answered without choices[0].message.content: {str(data)[:200]}")
        used = int((data.get("usage") or {}).get("completion_tokens") or 0)
        share, rest = divmod(used, len(texts))
        samples += [(text, share + (rest if i == 0 else 0)) for i, text in enumerate(texts)]
        request += 1
    return samples


def chat_once(client: httpx.Client, config: EndpointConfig, messages: Sequence[Message], *, seed: int,
              max_tokens: int | None = None, temperature: float | None = None) -> tuple[str, int]:
    """One chat completion with retries; returns (text, completion tokens)."""
    return chat_samples(client, config, messages, seed=seed, max_tokens=max_tokens, temperature=temperature)[0]


def generate_endpoint(
    config: EndpointConfig, prompts: Sequence[Sequence[Message]], progress: Progress | None = None, *,
    samples: int = 1,
) -> list[GeneratedText]:
    """``samples`` completions per prompt, prompt by prompt in input order, one request per prompt
    (``n=samples``), at most ``concurrency`` requests at a time. Prompt ``i``'s request carries
    seed ``config.seed + i``; its samples share that seed and are told apart by their order.
    ``progress(done, total)`` counts prompts."""
    total = len(prompts)
    done = 0
    params = {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
              "endpoint": config.base_url, "model": config.model}

    with httpx.Client() as client, ThreadPoolExecutor(max_workers=max(1, config.concurrency)) as pool:
        futures = [pool.submit(chat_samples, client, config, p, seed=config.seed + i, n=samples)
                   for i, p in enumerate(prompts)]
        results: list[GeneratedText] = []
        for i, future in enumerate(futures):
            for text, tokens in future.result():
                results.append(GeneratedText(text=text, params=params, seed=config.seed + i, tokens=tokens))
            done += 1
            if progress:
                progress(done, total)
    return results
