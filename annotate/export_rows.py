"""The rows of each export format, built from the votes of one comparison (``annotate.exports``
reads the votes and writes the files). Every function here is pure: dicts in, dicts out."""
from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from annotate.services import InvalidInput

PAIRWISE = ("trl", "trl-conversational", "hh-rlhf")
HH_LABELS = {"system": "System", "user": "Human", "assistant": "Assistant"}

Names = Callable[[str], str]  # username -> what the export shows


@dataclass(frozen=True)
class Verdict:
    """What the votes on one comparison say together."""

    choice: str | None  # the single most common choice; None when two or more share the top count
    top: frozenset[str]  # the choices sharing the top count
    agreement: float  # votes with the top choice / all votes
    strength: int | None  # lower median of the majority's strengths (None if none given)
    votes: int


def aggregate(votes: list[tuple[str, int | None]]) -> Verdict:
    """Aggregate ``(choice, strength)`` of a comparison's votes (choices: a, b, tie, both_bad)."""
    counts = Counter(choice for choice, _ in votes)
    best = max(counts.values())
    top = frozenset(choice for choice, n in counts.items() if n == best)
    choice = next(iter(top)) if len(top) == 1 else None
    strengths = [s for c, s in votes if c == choice and s is not None]
    strength = statistics.median_low(strengths) if strengths else None
    return Verdict(choice, top, best / len(votes), strength, len(votes))


def model_verdict(votes: list[tuple[str, int | None]], p_a: float | None) -> tuple[Verdict, float | None]:
    """The reliability model's verdict (``annotate.reliability``) and its confidence, from P(a is better).

    The model decides the side whenever the majority is, or includes, a side ("a", "b", or a split
    with one of them). Where the majority is tie or both bad only, the people said there is no side
    to learn: that verdict stands, as it does for a comparison the fit has not seen (``p_a`` None)
    and for an exact 0.5; the confidence is then None. Strength is the lower median of the
    strengths given for the side chosen; agreement the share of votes for it.
    """
    verdict = aggregate(votes)
    if p_a is None or p_a == 0.5 or verdict.top <= {"tie", "both_bad"}:
        return verdict, None
    choice = "a" if p_a > 0.5 else "b"
    strengths = [s for c, s in votes if c == choice and s is not None]
    agreement = sum(c == choice for c, _ in votes) / len(votes)
    strength = statistics.median_low(strengths) if strengths else None
    return Verdict(choice, frozenset({choice}), agreement, strength, len(votes)), max(p_a, 1 - p_a)



def prompt_text(messages: list[dict]) -> str:
    """A prompt as one string: a lone user message verbatim, else the turns Anthropic-HH style,
    ending ``"\\n\\nAssistant: "`` so that prompt + response reads as the next assistant turn."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return _hh(messages) + " "


def _hh(messages: list[dict]) -> str:
    return "".join(f"\n\n{HH_LABELS[m['role']]}: {m['content']}" for m in messages) + "\n\nAssistant:"


def side_text(vote: dict, side: str) -> str:
    return vote[f"comparison__completion_{side}__text"]


def _texts(vote: dict, verdict: Verdict) -> tuple[str, str]:
    a, b = side_text(vote, "a"), side_text(vote, "b")
    return (b, a) if verdict.choice == "b" else (a, b)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def response_text(value: str | list[dict]) -> str:
    """A response as text: a string as is, a message list (``pairs`` files) as its last message's content."""
    return value if isinstance(value, str) else value[-1]["content"]


def pairwise_of(fmt: str, vote: dict, verdict: Verdict, margin: bool) -> dict:
    chosen, rejected = _texts(vote, verdict)
    return pairwise_row(fmt, vote["comparison__prompt__messages"], chosen, rejected,
                        strength=verdict.strength, margin=margin)


def pairwise_row(fmt: str, messages: list[dict], chosen: str | list[dict], rejected: str | list[dict], *,
                 strength: int | None, margin: bool) -> dict:
    """One row of a pairwise format (trl, trl-conversational, hh-rlhf); with ``margin``, TRL's
    ``margin`` column from the strength (0, 0.5, 1; 0 when unknown). hh-rlhf has no margin.
    ``chosen``/``rejected`` are texts or one-assistant-message lists (as in a ``pairs`` file)."""
    if fmt not in PAIRWISE:
        raise InvalidInput(f"{fmt!r} is not a pairwise format ({', '.join(PAIRWISE)})")
    chosen, rejected = response_text(chosen), response_text(rejected)
    if fmt == "hh-rlhf":
        return {"chosen": f"{_hh(messages)} {chosen}", "rejected": f"{_hh(messages)} {rejected}"}
    if fmt == "trl":
        row: dict[str, Any] = {"prompt": prompt_text(messages), "chosen": chosen, "rejected": rejected}
    else:
        row = {"prompt": messages, "chosen": _assistant(chosen), "rejected": _assistant(rejected)}
    if margin:
        row["margin"] = 0.0 if strength is None else (strength - 1) / 2
    return row


def labels_of(verdict: Verdict) -> list[tuple[str, bool]]:
    """KTO labels of a comparison's completions: winner desirable, loser not; both bad: neither.
    A tie or an even split labels nothing: a tie ranks two completions, it does not grade them."""
    if verdict.choice in ("a", "b"):
        loser = "b" if verdict.choice == "a" else "a"
        return [(verdict.choice, True), (loser, False)]
    if verdict.choice == "both_bad":
        return [("a", False), ("b", False)]
    return []


def unpaired_row(fmt: str, messages: list[dict], completion: str, label: bool) -> dict:
    """One row of TRL's unpaired (KTO) format: text prompt and completion (``kto``, the prompt
    rendered as in ``trl``) or a conversation and one assistant message (``kto-conversational``)."""
    if fmt == "kto":
        return {"prompt": prompt_text(messages), "completion": completion, "label": label}
    return {"prompt": messages, "completion": _assistant(completion), "label": label}


def snapshot_pair(vote: dict, verdict: Verdict) -> dict | None:
    if verdict.choice == "both_bad" or (verdict.choice is None and "both_bad" in verdict.top):
        return None
    chosen, rejected = _texts(vote, verdict)
    return {
        "prompt_id": vote["comparison__prompt_id"],
        "prompt": vote["comparison__prompt__messages"],
        "chosen": _assistant(chosen),
        "rejected": _assistant(rejected),
        "tie": verdict.choice not in ("a", "b"),
        "strength": verdict.strength,
        "annotators": verdict.votes,
        "agreement": verdict.agreement,
    }


def raw_row(vote: dict, choice: str, verdict: Verdict, names: Names) -> dict:
    return {
        "comparison_id": vote["comparison_id"],
        "prompt_id": vote["comparison__prompt_id"],
        "prompt": vote["comparison__prompt__messages"],
        "a": vote["comparison__completion_a__text"],
        "b": vote["comparison__completion_b__text"],
        "checkpoint_a": vote["comparison__completion_a__checkpoint__name"],
        "checkpoint_b": vote["comparison__completion_b__checkpoint__name"],
        "choice": choice,
        "winner": choice if choice in ("a", "b") else None,
        "strength": vote["strength"],
        "rationale": vote["rationale"],
        "annotator": names(vote["annotator__username"]),
        "source": vote["source"],
        "time_spent_ms": vote["time_spent_ms"],
        "created_at": vote["created_at"].astimezone(UTC),
        "majority": verdict.choice,
        "agreement": verdict.agreement,
        "votes": verdict.votes,
    }


def _sampling(value: Any) -> str:
    return json.dumps(value or {}, ensure_ascii=False, sort_keys=True)


def raw_meta(vote: dict) -> dict:
    return {
        "reason": vote["comparison__reason"],
        "sampling_a": _sampling(vote["comparison__completion_a__sampling"]),
        "sampling_b": _sampling(vote["comparison__completion_b__sampling"]),
        "seed_a": vote["comparison__completion_a__seed"],
        "seed_b": vote["comparison__completion_b__seed"],
        "edited_from_a": vote["comparison__completion_a__edited_from_id"],
        "edited_from_b": vote["comparison__completion_b__edited_from_id"],
    }


def comparison_meta(group: list[dict], choices: list[str], names: Names) -> dict:
    """The comparison and its votes; the lists hold one entry per vote, in the same order."""
    first = group[0]
    return {
        "comparison_id": first["comparison_id"],
        "prompt_id": first["comparison__prompt_id"],
        "reason": first["comparison__reason"],
        "sources": sorted({vote["source"] for vote in group}),
        "annotator_ids": [names(vote["annotator__username"]) for vote in group],
        "choices": choices,
        "strengths": [vote["strength"] for vote in group],
        "rationales": [vote["rationale"] for vote in group],
        "time_spent_ms": [vote["time_spent_ms"] for vote in group],
        "voted_at": [vote["created_at"].astimezone(UTC) for vote in group],
    }


def completion_meta(vote: dict, side: str, suffix: str) -> dict:
    return {
        f"checkpoint{suffix}": vote[f"comparison__completion_{side}__checkpoint__name"],
        f"sampling{suffix}": _sampling(vote[f"comparison__completion_{side}__sampling"]),
        f"seed{suffix}": vote[f"comparison__completion_{side}__seed"],
        f"edited_from{suffix}": vote[f"comparison__completion_{side}__edited_from_id"],
    }
