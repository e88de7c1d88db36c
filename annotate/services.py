"""Writes of the annotate app other than votes: projects, members, prompts, completions, comparisons."""
from __future__ import annotations

import random
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.db import transaction

from annotate.canary import NOT_CANARY, canary_draw, canary_rates
from annotate.models import (
    Checkpoint,
    Comparison,
    Completion,
    Membership,
    Project,
    Prompt,
    messages_hash,
    text_hash,
)

ROLES = {"system", "user", "assistant"}
# Prompt ids per IN (...) lookup and rows per bulk insert (the imports' CHUNK; they import this module).
_CHUNK = 500


class InvalidInput(ValueError):
    """Input that cannot be stored; the message names what is wrong."""


# Checkpoints whose texts are never paired with other answers: gold's (annotate.gold) and people's edits
# (annotate.edits: each already has its closed comparison with the original).
UNPAIRED_CHECKPOINTS = ("gold", "human-edit")


def messages_clean(value) -> list[dict]:
    """Accept a prompt string or a list of chat messages; return the canonical message list."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidInput("prompt is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidInput("messages must be a non-empty list of {role, content} objects")
    cleaned = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidInput(f"messages[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidInput(f"messages[{i}].role must be one of {sorted(ROLES)}, not {role!r}")
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{i}].content must be a string")
        cleaned.append({"role": role, "content": content})
    if cleaned[-1]["role"] == "assistant":
        raise InvalidInput("the last message of a prompt must not be the assistant's (that is the completion)")
    return cleaned


def project_create(*, slug: str, name: str, guidelines: str = "", votes_per_comparison: int = 1) -> Project:
    return Project.objects.create(
        slug=slug, name=name, guidelines=guidelines, votes_per_comparison=votes_per_comparison
    )


def member_add(*, project: Project, user, role: str = Membership.Role.ANNOTATOR) -> Membership:
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


def user_with_role(*, project: Project, username: str, password: str, role: str):
    """Create (or reset the password of) a user and make them a member. Used by the demo and tests."""
    user, _ = get_user_model().objects.get_or_create(username=username)
    user.set_password(password)
    user.save(update_fields=["password"])
    member_add(project=project, user=user, role=role)
    return user


def prompt_get_or_create(*, project: Project, messages, source: str = "", tags=()) -> tuple[Prompt, bool]:
    messages = messages_clean(messages)
    return Prompt.objects.get_or_create(
        project=project,
        content_hash=messages_hash(messages),
        defaults={"messages": messages, "source": source, "tags": list(tags)},
    )


def checkpoint_get_or_create(*, project: Project, name: str, **fields) -> Checkpoint:
    if not name or len(name) > 200:
        raise InvalidInput("checkpoint name must be 1 to 200 characters")
    checkpoint, _ = Checkpoint.objects.get_or_create(project=project, name=name, defaults=fields)
    return checkpoint


def completion_get_or_create(
    *, prompt: Prompt, checkpoint: Checkpoint, text: str, sampling=None, seed=None
) -> tuple[Completion, bool]:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("completion text is empty")
    return Completion.objects.get_or_create(
        prompt=prompt,
        checkpoint=checkpoint,
        text_hash=text_hash(text),
        defaults={"text": text, "sampling": sampling or {}, "seed": seed},
    )


def comparison_create(
    *,
    first: Completion,
    second: Completion,
    reason: str = Comparison.Reason.RANDOM,
    priority: int = 0,
    rng: random.Random | None = None,
) -> tuple[Comparison, bool]:
    """Pair two completions of one prompt; the A/B positions are drawn here and stored.

    An existing comparison of the same two completions (in either order) is returned instead.
    """
    if first.prompt_id != second.prompt_id:
        raise InvalidInput("a comparison pairs two completions of the same prompt")
    if first.pk == second.pk:
        raise InvalidInput("a comparison needs two different completions")
    existing = Comparison.objects.filter(
        completion_a__in=(first, second), completion_b__in=(first, second)
    ).first()
    if existing:
        return existing, False
    a, b = (first, second) if (rng or random).random() < 0.5 else (second, first)
    project = first.prompt.project
    canary = reason not in NOT_CANARY and canary_draw(rate=project.canary_rate, first_id=a.pk, second_id=b.pk)
    comparison = Comparison.objects.create(
        project_id=project.pk,
        prompt_id=first.prompt_id,
        completion_a=a,
        completion_b=b,
        reason=reason,
        priority=priority,
        canary=canary,
    )
    return comparison, True


def comparisons_create(
    *,
    pairs: Iterable[tuple[Completion, Completion]],
    reason: str = Comparison.Reason.RANDOM,
    priority: int = 0,
    rng: random.Random | None = None,
) -> int:
    """Pair each ``(first, second)`` in bulk, as ``comparison_create`` pairs one; return how many were created.

    Each pair is two different completions of one prompt (else ``InvalidInput``, and nothing is
    written); the comparison's project is the prompt's. A pair already stored (in either order),
    or named again in ``pairs``, is skipped. The A/B positions of the new ones are drawn from
    ``rng`` in the order of ``pairs``, one draw per new pair, so a seeded rng gives the positions
    ``comparison_create`` would have given pair by pair. Completions need only ``pk`` and
    ``prompt_id`` loaded. Two reads per 500 prompts, then one insert per 500 new comparisons.

    Unless ``reason`` is a battle, gold or an edit, each new pair is a canary (held out of training,
    ``annotate.canary``) at its project's ``canary_rate``, by a hash of the pair: deterministic.
    """
    pairs = list(pairs)
    for first, second in pairs:
        if first.prompt_id != second.prompt_id:
            raise InvalidInput("a comparison pairs two completions of the same prompt")
        if first.pk == second.pk:
            raise InvalidInput("a comparison needs two different completions")
    prompt_ids = sorted({first.prompt_id for first, _ in pairs})
    draw = (rng or random).random
    with transaction.atomic():
        project_of: dict[int, int] = {}
        stored: set[frozenset[int]] = set()
        for start in range(0, len(prompt_ids), _CHUNK):
            chunk = prompt_ids[start : start + _CHUNK]
            project_of.update(Prompt.objects.filter(pk__in=chunk).values_list("id", "project_id"))
            existing = Comparison.objects.filter(prompt_id__in=chunk).values_list("completion_a_id", "completion_b_id")
            stored.update(frozenset(pair) for pair in existing)
        rates = canary_rates(project_of.values()) if reason not in NOT_CANARY else {}
        new = []
        for first, second in pairs:
            key = frozenset((first.pk, second.pk))
            if key in stored:
                continue
            stored.add(key)
            a, b = (first, second) if draw() < 0.5 else (second, first)
            project_id = project_of[first.prompt_id]
            canary = reason not in NOT_CANARY and canary_draw(rate=rates.get(project_id, 0.0), first_id=a.pk,
                                                              second_id=b.pk)
            new.append(Comparison(project_id=project_id, prompt_id=first.prompt_id, completion_a_id=a.pk,
                                  completion_b_id=b.pk, reason=reason, priority=priority, canary=canary))
        Comparison.objects.bulk_create(new, batch_size=_CHUNK)
    return len(new)


def comparisons_build(
    *,
    project: Project,
    prompt_ids: Iterable[int] | None = None,
    reason: str = Comparison.Reason.RANDOM,
    priority: int = 0,
    seed: int | None = None,
) -> int:
    """Pair completions from different checkpoints on the same prompt; return how many were created.

    Each pair of checkpoints on a prompt gets one comparison (its first completion of each).
    """
    completions = (Completion.objects.filter(prompt__project=project)
                   .exclude(checkpoint__name__in=UNPAIRED_CHECKPOINTS)
                   .only("id", "prompt_id", "checkpoint_id"))
    if prompt_ids is not None:
        completions = completions.filter(prompt_id__in=list(prompt_ids))
    by_prompt: dict[int, dict[int, Completion]] = {}
    for completion in completions.order_by("id"):
        by_prompt.setdefault(completion.prompt_id, {}).setdefault(completion.checkpoint_id, completion)
    pairs = []
    for per_checkpoint in by_prompt.values():
        firsts = list(per_checkpoint.values())
        for i, first in enumerate(firsts):
            pairs.extend((first, second) for second in firsts[i + 1 :])
    return comparisons_create(pairs=pairs, reason=reason, priority=priority, rng=random.Random(seed))
