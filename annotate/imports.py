"""Bulk imports: prompts, completions and judged preference pairs, from files or JSON bodies.

Contract shared by every import:

* the input is read whole (refused before parsing when larger than
  ``settings.IMPORT_MAX_BYTES``), every row is validated, and only then is
  anything written, in ONE transaction;
* the first bad row raises ``ImportFailed`` naming its 1-based line (index + 1
  for JSON bodies) and its field; nothing from that input is stored;
* rows already stored (same content hash) are skipped and counted, so importing
  the same file twice stores nothing new.

Files are JSONL (one object per line, blank lines ignored) unless the filename
ends in ``.csv``, which only prompts accept. Writes are bulk inserts, a few
queries per 500 rows, never one query per row. docs/export-formats.md has examples.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import PurePath
from typing import IO

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotate.import_rows import (
    CHUNK,
    IMPORTED,
    CompletionRow,
    ImportFailed,
    ImportResult,
    PreferenceRow,
    body_rows,
    completion_row,
    file_rows,
    preference_row,
    prompt_row,
)
from annotate.models import (
    Checkpoint,
    Comparison,
    Completion,
    Project,
    Prompt,
    Vote,
    messages_hash,
    text_hash,
)
from annotate.services import InvalidInput, comparisons_build
from annotate.signals import votes_recorded

__all__ = [
    "ImportFailed", "ImportResult", "InvalidInput", "import_completion_rows", "import_completions",
    "import_preferences", "import_prompt_rows", "import_prompts", "imported_user",
]


# --- writing -----------------------------------------------------------------------------------


def _chunks(items: list) -> Iterable[list]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _prompts_ensure(
    project: Project, rows: Iterable[tuple[list[dict], str, list[str]]]
) -> tuple[dict[str, int], int, int]:
    """Content hash → prompt id for every row, inserting the missing prompts; plus (created, skipped)."""
    wanted: dict[str, Prompt] = {}
    skipped = 0
    for messages, source, tags in rows:
        content_hash = messages_hash(messages)
        if content_hash in wanted:
            skipped += 1
            continue
        wanted[content_hash] = Prompt(project=project, messages=messages, content_hash=content_hash,
                                      source=source, tags=tags)
    ids: dict[str, int] = {}
    for chunk in _chunks(list(wanted)):
        found = Prompt.objects.filter(project=project, content_hash__in=chunk)
        ids.update(found.values_list("content_hash", "id"))
    new = [prompt for content_hash, prompt in wanted.items() if content_hash not in ids]
    Prompt.objects.bulk_create(new, batch_size=CHUNK)
    ids.update((prompt.content_hash, prompt.pk) for prompt in new)
    return ids, len(new), skipped + len(wanted) - len(new)


def _checkpoints_ensure(project: Project, names: set[str]) -> dict[str, int]:
    ids = dict(Checkpoint.objects.filter(project=project, name__in=names).values_list("name", "id"))
    new = [Checkpoint(project=project, name=name) for name in sorted(names - set(ids))]
    Checkpoint.objects.bulk_create(new, batch_size=CHUNK)
    return ids | {checkpoint.name: checkpoint.pk for checkpoint in new}


CompletionKey = tuple[int, int, str]  # prompt id, checkpoint id, text hash


def _completions_ensure(new_rows: dict[CompletionKey, Completion]) -> tuple[dict[CompletionKey, int], int]:
    """Key → completion id for every wanted completion, inserting the missing ones; plus created."""
    ids: dict[CompletionKey, int] = {}
    prompt_ids = sorted({key[0] for key in new_rows})
    checkpoint_ids = {key[1] for key in new_rows}
    for chunk in _chunks(prompt_ids):
        existing = Completion.objects.filter(prompt_id__in=chunk, checkpoint_id__in=checkpoint_ids)
        for prompt_id, checkpoint_id, hashed, pk in existing.values_list(
            "prompt_id", "checkpoint_id", "text_hash", "id"
        ):
            if (prompt_id, checkpoint_id, hashed) in new_rows:
                ids[(prompt_id, checkpoint_id, hashed)] = pk
    new = [completion for key, completion in new_rows.items() if key not in ids]
    Completion.objects.bulk_create(new, batch_size=CHUNK)
    ids.update(((c.prompt_id, c.checkpoint_id, c.text_hash), c.pk) for c in new)
    return ids, len(new)


def _atomically(write, *args) -> ImportResult:
    try:
        with transaction.atomic():
            return write(*args)
    except IntegrityError:
        raise ImportFailed(
            "another import or edit stored some of the same rows at the same time; nothing was stored, try again"
        ) from None


def _write_prompts(project: Project, rows: list[tuple[list[dict], str, list[str]]]) -> ImportResult:
    _, created, skipped = _prompts_ensure(project, rows)
    return ImportResult(created=created, skipped=skipped)


def _write_completions(project: Project, rows: list[CompletionRow]) -> ImportResult:
    prompt_ids, _, _ = _prompts_ensure(project, ((row.messages, "import", []) for row in rows))
    checkpoint_ids = _checkpoints_ensure(project, {row.checkpoint for row in rows})
    wanted: dict[CompletionKey, Completion] = {}
    for row in rows:
        completion = Completion(prompt_id=prompt_ids[messages_hash(row.messages)], text=row.text,
                                checkpoint_id=checkpoint_ids[row.checkpoint], text_hash=text_hash(row.text),
                                sampling=row.sampling, seed=row.seed)
        wanted.setdefault((completion.prompt_id, completion.checkpoint_id, completion.text_hash), completion)
    _, created = _completions_ensure(wanted)
    built = comparisons_build(project=project, prompt_ids=sorted({key[0] for key in wanted}))
    return ImportResult(created=created, skipped=len(rows) - created, comparisons=built)


def imported_user():
    """The inactive system user that imported votes belong to (no password can log it in)."""
    user, created = get_user_model().objects.get_or_create(username=IMPORTED, defaults={"is_active": False})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    elif user.has_usable_password():
        raise ImportFailed(f"a person has the username {IMPORTED!r}, which imported votes need; rename them")
    return user


def _write_preferences(project: Project, rows: list[PreferenceRow]) -> ImportResult:
    user = imported_user()
    prompt_ids, _, _ = _prompts_ensure(project, ((row.messages, IMPORTED, []) for row in rows))
    checkpoint_id = _checkpoints_ensure(project, {IMPORTED})[IMPORTED]
    wanted: dict[CompletionKey, Completion] = {}
    pairs: list[tuple[int, CompletionKey, CompletionKey, int | None]] = []
    for row in rows:
        prompt_id = prompt_ids[messages_hash(row.messages)]
        chosen_key = (prompt_id, checkpoint_id, text_hash(row.chosen))
        rejected_key = (prompt_id, checkpoint_id, text_hash(row.rejected))
        for key, text in ((chosen_key, row.chosen), (rejected_key, row.rejected)):
            wanted.setdefault(
                key, Completion(prompt_id=prompt_id, checkpoint_id=checkpoint_id, text=text, text_hash=key[2])
            )
        pairs.append((prompt_id, chosen_key, rejected_key, row.strength))
    completion_ids, _ = _completions_ensure(wanted)
    existing = _comparisons_of(sorted(prompt_ids.values()))
    voted: set[int] = set()
    for chunk in _chunks([pk for pk, _ in existing.values()]):
        votes_of_user = Vote.objects.filter(annotator=user, comparison_id__in=chunk)
        voted.update(votes_of_user.values_list("comparison_id", flat=True))

    now, seen, skipped = timezone.now(), set(), 0
    votes: list[Vote] = []
    new: list[tuple[Comparison, int, int | None]] = []  # comparison, chosen completion id, strength
    closed: list[int] = []
    for prompt_id, chosen_key, rejected_key, strength in pairs:
        chosen, rejected = completion_ids[chosen_key], completion_ids[rejected_key]
        pair = frozenset((chosen, rejected))
        if pair in seen or (pair in existing and existing[pair][0] in voted):
            skipped += 1  # the same pair twice in the file, or imported before
            continue
        seen.add(pair)
        if pair in existing:  # the same two texts were already paired: that comparison gets the vote
            pk, a = existing[pair]
            closed.append(pk)
            votes.append(_vote(pk, user, chosen, "a" if a == chosen else "b", strength, now))
            continue
        a, b = (chosen, rejected) if random.random() < 0.5 else (rejected, chosen)
        comparison = Comparison(project=project, prompt_id=prompt_id, completion_a_id=a, completion_b_id=b,
                                reason=Comparison.Reason.IMPORTED, state=Comparison.State.CLOSED, vote_count=1)
        new.append((comparison, chosen, strength))
    Comparison.objects.bulk_create([comparison for comparison, _, _ in new], batch_size=CHUNK)
    for comparison, chosen, strength in new:
        choice = "a" if comparison.completion_a_id == chosen else "b"
        votes.append(_vote(comparison.pk, user, chosen, choice, strength, now))
    for chunk in _chunks(closed):
        Comparison.objects.filter(id__in=chunk).update(vote_count=F("vote_count") + 1, state=Comparison.State.CLOSED)
    Vote.objects.bulk_create(votes, batch_size=CHUNK)
    if votes:
        project_id, count = project.pk, len(votes)
        transaction.on_commit(lambda: votes_recorded.send(sender=Vote, project_id=project_id, count=count))
    return ImportResult(created=len(votes), skipped=skipped, comparisons=len(new))


def _comparisons_of(prompt_ids: list[int]) -> dict[frozenset[int], tuple[int, int]]:
    """{completion a, completion b} → (comparison id, completion a id) for the comparisons of these prompts."""
    found = {}
    for chunk in _chunks(prompt_ids):
        rows = Comparison.objects.filter(prompt_id__in=chunk)
        for pk, a, b in rows.values_list("id", "completion_a_id", "completion_b_id"):
            found[frozenset((a, b))] = (pk, a)
    return found


def _vote(comparison_id: int, user, winner_id: int, choice: str, strength: int | None, now) -> Vote:
    return Vote(comparison_id=comparison_id, annotator=user, choice=choice, winner_id=winner_id,
                strength=strength, source=Vote.Source.IMPORTED, created_at=now)


# --- public entry points -----------------------------------------------------------------------


def import_prompts(*, project: Project, stream: IO[bytes], filename: str, source: str = "") -> ImportResult:
    """Import prompts from JSONL (``{"prompt": str}`` or ``{"messages": [...]}``, optional
    ``tags`` and ``source``) or CSV (``prompt`` column, optional ``tags`` "a, b").

    ``source`` defaults to the file's name. Prompts already in the project are skipped.
    """
    default_source = source or PurePath(filename).name[:100]
    rows = [prompt_row(line, row, default_source) for line, row in file_rows(stream, filename, csv_ok=True)]
    return _atomically(_write_prompts, project, rows)


def import_prompt_rows(*, project: Project, rows: list[dict], source: str = "api") -> ImportResult:
    """``import_prompts`` for a parsed JSON body; errors name ``line`` = index + 1."""
    cleaned = [prompt_row(line, row, source) for line, row in body_rows(rows)]
    return _atomically(_write_prompts, project, cleaned)


def import_completions(*, project: Project, stream: IO[bytes], filename: str) -> ImportResult:
    """Import completions (``{"prompt", "checkpoint", "text"[, "sampling", "seed"]}`` per line),
    creating prompts and checkpoints as needed, then pair completions of different checkpoints
    on the touched prompts into comparisons (``result.comparisons`` of them are new).
    """
    rows = [completion_row(line, row) for line, row in file_rows(stream, filename)]
    return _atomically(_write_completions, project, rows)


def import_completion_rows(*, project: Project, rows: list[dict]) -> ImportResult:
    """``import_completions`` for a parsed JSON body; errors name ``line`` = index + 1."""
    cleaned = [completion_row(line, row) for line, row in body_rows(rows)]
    return _atomically(_write_completions, project, cleaned)


def import_preferences(*, project: Project, stream: IO[bytes], filename: str) -> ImportResult:
    """Import judged pairs in TRL's preference format, as closed comparisons with one vote each.

    Rows are explicit-prompt strings ``{"prompt", "chosen", "rejected"}``, conversational
    (``prompt`` a message list, ``chosen``/``rejected`` lists of one assistant message), or
    TRL's implicit-prompt conversational rows; optional ``margin`` (>= 0) becomes a strength.
    Each pair is two completions of checkpoint "imported", a closed comparison (reason
    "imported", positions drawn at random) and a vote by the inactive user "imported"
    (source "imported") for the chosen one. A pair imported before is skipped.
    ``result.created`` counts votes, ``result.comparisons`` new comparisons.
    """
    rows = [preference_row(line, row) for line, row in file_rows(stream, filename)]
    return _atomically(_write_preferences, project, rows)
