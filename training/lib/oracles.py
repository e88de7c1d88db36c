"""Oracles: automatic judges of a pair of answers, for simulated annotators and AI feedback.

Pure: no Django. An oracle judges a batch of (prompt, answer A, answer B) and returns
"a", "b" or "tie" for each. Specs, as given on the command line:

- ``length:short`` / ``length:long``: the shorter (longer) answer wins;
- ``contains:WORD``: the answer containing WORD (case-insensitive) wins;
- ``regex:PATTERN``: the answer matching PATTERN wins;
- ``rm:PATH``: the answer with the higher reward under the reward model saved at PATH;
- ``judge:BASE_URL#MODEL``: an LLM judge at an OpenAI-compatible endpoint (RLAIF).

When neither or both answers satisfy a rule, the rule calls a tie.

The LLM judge is asked twice per pair, once in each order (answers swapped), and its verdict stands
only when both agree; otherwise it says ``DISAGREE``. A reply that is not exactly A, B or TIE is
``UNPARSEABLE``, never a tie. Neither is a vote: the simulated annotator skips the pair and counts it.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from training.lib.endpoint import EndpointConfig, chat_once

Message = dict[str, str]
Verdict = str  # "a" | "b" | "tie", or one of NO_VOTE
UNPARSEABLE = "unparseable"
DISAGREE = "disagree"
NO_VOTE = (UNPARSEABLE, DISAGREE)


@dataclass(frozen=True)
class Oracle:
    """A named batch judge. ``is_ai`` marks verdicts that come from a language model."""

    name: str
    judge: Callable[[Sequence[Sequence[Message]], Sequence[str], Sequence[str]], list[Verdict]]
    is_ai: bool = False


def _by_predicate(test: Callable[[str], bool]):
    def judge(prompts, answers_a, answers_b) -> list[Verdict]:
        verdicts = []
        for a, b in zip(answers_a, answers_b, strict=True):
            pa, pb = test(a), test(b)
            verdicts.append("a" if pa and not pb else "b" if pb and not pa else "tie")
        return verdicts

    return judge


def _by_score(score: Callable[[str], float]):
    def judge(prompts, answers_a, answers_b) -> list[Verdict]:
        return [
            "a" if score(a) > score(b) else "b" if score(b) > score(a) else "tie"
            for a, b in zip(answers_a, answers_b, strict=True)
        ]

    return judge


def reward_model_oracle(path: str, *, batch_size: int = 16) -> Oracle:
    # torch loads here, not at import: rule oracles judge in web and management processes.
    from rewardmodel.lib.model import load_reward_model
    from rewardmodel.lib.score import score

    model = load_reward_model(path)

    def judge(prompts, answers_a, answers_b) -> list[Verdict]:
        prompts = list(prompts)
        ra = score(model, prompts, list(answers_a), batch_size=batch_size)
        rb = score(model, prompts, list(answers_b), batch_size=batch_size)
        return ["a" if x > y else "b" if y > x else "tie" for x, y in zip(ra, rb, strict=True)]

    return Oracle(name=f"rm:{path}", judge=judge)


JUDGE_INSTRUCTIONS = (
    "You compare two answers to the same conversation. Reply with exactly one token: "
    "A if answer A is better, B if answer B is better, or TIE if they are equally good."
)


def _judge_messages(prompt: Sequence[Message], a: str, b: str) -> list[Message]:
    conversation = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in prompt)
    return [
        {"role": "system", "content": JUDGE_INSTRUCTIONS},
        {"role": "user", "content": f"Conversation:\n{conversation}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\nWhich is better?"},
    ]


def parse_verdict(text: str) -> Verdict:
    """The judge's reply read strictly: A, B or TIE (case, surrounding quotes, brackets, a final full
    stop and an "Answer" prefix aside); anything else is UNPARSEABLE, never a tie."""
    token = re.sub(r"^(ANSWER\s*)?", "", text.strip().upper().strip("\"'*[]().: \n\t"))
    return {"A": "a", "B": "b", "TIE": "tie"}.get(token.strip("\"'*[]().: "), UNPARSEABLE)


def order_checked(first: Verdict, swapped: Verdict) -> Verdict:
    """One verdict from two asks, the second with the answers swapped: it stands only if both agree."""
    if UNPARSEABLE in (first, swapped):
        return UNPARSEABLE
    back = {"a": "b", "b": "a", "tie": "tie"}[swapped]
    return first if first == back else DISAGREE


def judge_oracle(base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4) -> Oracle:
    config = EndpointConfig(base_url=base_url, model=model, api_key_env=api_key_env, temperature=0.0,
                            max_new_tokens=4, concurrency=concurrency)

    def judge(prompts, answers_a, answers_b) -> list[Verdict]:
        # Both orders of every pair, at most ``concurrency`` requests in flight.
        asks = [(p, a, b) for p, a, b in zip(prompts, answers_a, answers_b, strict=True)]
        asks += [(p, b, a) for p, a, b in zip(prompts, answers_a, answers_b, strict=True)]
        with httpx.Client() as client, ThreadPoolExecutor(max_workers=concurrency) as pool:
            verdicts = [parse_verdict(r) for r in pool.map(
                lambda item: chat_once(client, config, _judge_messages(*item), seed=0)[0], asks)]
        n = len(prompts)
        return [order_checked(first, swapped) for first, swapped in zip(verdicts[:n], verdicts[n:], strict=True)]

    return Oracle(name=f"judge:{base_url}#{model}", judge=judge, is_ai=True)


def parse_oracle(spec: str) -> Oracle:
    """An oracle from its command-line spec (see the module docstring); ValueError names a bad spec."""
    kind, _, arg = spec.partition(":")
    if kind == "length" and arg in ("short", "long"):
        sign = -1 if arg == "short" else 1
        return Oracle(name=spec, judge=_by_score(lambda text: sign * len(text)))
    if kind == "contains" and arg:
        word = arg.lower()
        return Oracle(name=spec, judge=_by_predicate(lambda text: word in text.lower()))
    if kind == "regex" and arg:
        try:
            pattern = re.compile(arg)
        except re.error as error:
            raise ValueError(f"bad regex in oracle {spec!r}: {error}") from None
        return Oracle(name=spec, judge=_by_predicate(lambda text: bool(pattern.search(text))))
    if kind == "rm" and arg:
        return reward_model_oracle(arg)
    if kind == "judge" and "#" in arg:
        base_url, model = arg.split("#", 1)
        return judge_oracle(base_url, model)
    raise ValueError(
        f"unknown oracle {spec!r}: use length:short, length:long, contains:WORD, regex:PATTERN, rm:PATH "
        "or judge:BASE_URL#MODEL"
    )


def with_noise(verdicts: list[Verdict], noise: float, rng: random.Random) -> list[Verdict]:
    """Flip each A/B verdict with probability ``noise`` (label noise of a simulated person)."""
    flip = {"a": "b", "b": "a", "tie": "tie"}
    return [flip.get(v, v) if rng.random() < noise else v for v in verdicts]
