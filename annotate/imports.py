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

import csv
import io
import json
import math
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotate.models import Checkpoint, Comparison, Completion, Project, Prompt, Vote, messages_hash, text_hash
from annotate.services import InvalidInput, comparisons_build, messages_clean
from annotate.signals import votes_recorded

IMPORTED = "imported"  # the system user and the checkpoint behind imported preferences
CHUNK = 500  # keys per IN (...) lookup and rows per bulk insert
SEED_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class ImportResult:
    """What an import stored: rows created, rows skipped as duplicates, comparisons built."""

    created: int
    skipped: int
    comparisons: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ImportFailed(InvalidInput):
    """A bad input; ``line`` (1-based) and ``field`` say where, when known. Nothing was stored."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        self.message, self.line, self.field = message, line, field
        where = ([f"line {line}"] if line is not None else []) + ([f'field "{field}"'] if field else [])
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


# --- reading ---------------------------------------------------------------------------------


def _read(stream: IO[bytes]) -> bytes:
    """The whole stream, or ImportFailed when it holds more than IMPORT_MAX_BYTES."""
    limit = settings.IMPORT_MAX_BYTES
    size = None
    try:
        if stream.seekable():
            start = stream.tell()
            stream.seek(0, io.SEEK_END)
            size = stream.tell() - start
            stream.seek(start)
    except (AttributeError, OSError, ValueError):
        size = None  # not seekable: the bounded read below counts instead
    blocks: list[bytes] = []
    total = 0
    while (size is None or size <= limit) and total <= limit:  # a raw stream may return short reads
        block = stream.read(min(1 << 20, limit + 1 - total))
        if not isinstance(block, bytes):
            raise TypeError("imports read binary streams (open the file with 'rb')")
        if not block:
            break
        blocks.append(block)
        total += len(block)
    if (size is not None and size > limit) or total > limit:
        shown = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
        raise ImportFailed(
            f"the file is {shown}; imports are limited to {limit:,} bytes (IMPORT_MAX_BYTES). "
            "Split it into smaller files."
        )
    return b"".join(blocks)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ImportFailed("is not UTF-8 text (save the file as UTF-8)", line=line) from None


def _jsonl(text: str) -> list[tuple[int, Any]]:
    rows = []
    # Not str.splitlines(): JSON strings may hold a raw U+2028, which splitlines() would cut.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            hint = " (the file must hold one JSON object per line: JSONL)" if not rows else ""
            raise ImportFailed(f"invalid JSON: {error.msg} at column {error.colno}{hint}", line=number) from None
    return rows


def _csv(text: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in reader.fieldnames or []]
        if "prompt" not in header:
            raise ImportFailed('the header row must name a "prompt" column', line=1, field="prompt")
        reader.fieldnames = header
        return [(reader.line_num, _csv_row(row)) for row in reader]
    except csv.Error as error:
        raise ImportFailed(f"invalid CSV: {error}", line=reader.line_num + 1) from None


def _csv_row(row: dict) -> dict:
    row = {key: value for key, value in row.items() if key is not None}  # None: cells beyond the header
    tags = row.get("tags") or ""
    row["tags"] = [tag.strip() for tag in re.split(r"[,;]", tags) if tag.strip()]  # "a, b; c"
    return row


def _file_rows(stream: IO[bytes], filename: str, *, csv_ok: bool = False) -> list[tuple[int, Any]]:
    is_csv = PurePath(filename).suffix.lower() == ".csv"
    if is_csv and not csv_ok:
        raise ImportFailed("this import reads JSONL only (one JSON object per line), not CSV")
    text = _decode(_read(stream))
    rows = _csv(text) if is_csv else _jsonl(text)
    if not rows:
        raise ImportFailed("the file holds no rows")
    return rows


def _body_rows(rows: Any) -> list[tuple[int, Any]]:
    if not isinstance(rows, list) or not rows:
        raise ImportFailed("rows must be a non-empty list of objects")
    return list(enumerate(rows, start=1))


# --- validating one row ------------------------------------------------------------------------


def _object(line: int, row: Any) -> dict:
    if not isinstance(row, dict):
        raise ImportFailed("must be a JSON object", line=line)
    return row


def _text(value: Any, *, line: int, field: str) -> str:
    if not isinstance(value, str):
        raise ImportFailed("is missing" if value is None else "must be a string", line=line, field=field)
    if not value.strip():
        raise ImportFailed("must not be empty", line=line, field=field)
    return value


def _messages(value: Any, *, line: int, field: str) -> list[dict]:
    if value is None:
        raise ImportFailed("is missing (a string or a list of messages)", line=line, field=field)
    if not isinstance(value, (str, list)):
        raise ImportFailed("must be a string or a list of messages", line=line, field=field)
    if isinstance(value, str) and not value.strip():
        raise ImportFailed("must not be empty", line=line, field=field)
    try:
        messages = messages_clean(value)
    except InvalidInput as error:
        raise ImportFailed(str(error), line=line, field=field) from None
    for i, message in enumerate(messages):
        if not message["content"].strip():
            raise ImportFailed(f"messages[{i}].content is empty", line=line, field=field)
    return messages


def _is_number(value: Any, kind: type) -> bool:
    """JSON numbers only: a bool is an int to Python but not a number here; kind float accepts ints."""
    return not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)


def _tags(value: Any, line: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ImportFailed("must be a list of strings", line=line, field="tags")
    return value


def _prompt_row(line: int, row: Any, default_source: str) -> tuple[list[dict], str, list[str]]:
    row = _object(line, row)
    if "prompt" in row and "messages" in row:
        raise ImportFailed('give "prompt" or "messages", not both', line=line, field="messages")
    field = "messages" if "messages" in row else "prompt"
    messages = _messages(row.get(field), line=line, field=field)
    source = row.get("source") or default_source
    if not isinstance(source, str) or len(source) > 100:
        raise ImportFailed("must be a string of at most 100 characters", line=line, field="source")
    return messages, source, _tags(row.get("tags"), line)


@dataclass(frozen=True)
class _CompletionRow:
    messages: list[dict]
    checkpoint: str
    text: str
    sampling: dict
    seed: int | None


def _completion_row(line: int, row: Any) -> _CompletionRow:
    row = _object(line, row)
    messages = _messages(row.get("prompt"), line=line, field="prompt")
    checkpoint = _text(row.get("checkpoint"), line=line, field="checkpoint")
    if len(checkpoint) > 200:
        raise ImportFailed("must be at most 200 characters", line=line, field="checkpoint")
    sampling = {} if row.get("sampling") is None else row["sampling"]
    seed = row.get("seed")
    if not isinstance(sampling, dict):
        raise ImportFailed("must be an object of sampling parameters", line=line, field="sampling")
    if seed is not None and not (_is_number(seed, int) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise ImportFailed("must be a 64-bit integer", line=line, field="seed")
    text = _text(row.get("text"), line=line, field="text")
    return _CompletionRow(messages, checkpoint, text, sampling, seed)


@dataclass(frozen=True)
class _PreferenceRow:
    messages: list[dict]
    chosen: str
    rejected: str
    strength: int | None


def _response(value: Any, *, line: int, field: str, conversational: bool) -> str:
    if conversational:
        if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)):
            raise ImportFailed("must be a list holding one assistant message", line=line, field=field)
        if value[0].get("role") != "assistant":
            raise ImportFailed(f"role must be 'assistant', not {value[0].get('role')!r}", line=line, field=field)
        return _text(value[0].get("content"), line=line, field=field)
    if not isinstance(value, str):
        raise ImportFailed("must be a string, like the prompt", line=line, field=field)
    return _text(value, line=line, field=field)


def _preference_row(line: int, row: Any) -> _PreferenceRow:
    row = _object(line, row)
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if "prompt" not in row and isinstance(chosen, list) and isinstance(rejected, list):
        # TRL's implicit-prompt conversational rows: the prompt is the turns before the last.
        if chosen[:-1] != rejected[:-1]:
            raise ImportFailed("must share every turn but the last with chosen", line=line, field="rejected")
        row = {**row, "prompt": chosen[:-1] or None, "chosen": chosen[-1:], "rejected": rejected[-1:]}
    messages = _messages(row.get("prompt"), line=line, field="prompt")
    conversational = isinstance(row["prompt"], list)
    chosen = _response(row.get("chosen"), line=line, field="chosen", conversational=conversational)
    rejected = _response(row.get("rejected"), line=line, field="rejected", conversational=conversational)
    if chosen == rejected:
        raise ImportFailed("is the same text as chosen", line=line, field="rejected")
    margin = row.get("margin")
    if margin is not None and not (_is_number(margin, float) and math.isfinite(margin) and margin >= 0):
        raise ImportFailed("must be a non-negative number", line=line, field="margin")
    # The inverse of the export's margin = (strength - 1) / 2, clamped to the three strengths.
    strength = None if margin is None else min(3, max(1, 1 + round(2 * margin)))
    return _PreferenceRow(messages, chosen, rejected, strength)


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


def _write_completions(project: Project, rows: list[_CompletionRow]) -> ImportResult:
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


def _write_preferences(project: Project, rows: list[_PreferenceRow]) -> ImportResult:
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
    rows = [_prompt_row(line, row, default_source) for line, row in _file_rows(stream, filename, csv_ok=True)]
    return _atomically(_write_prompts, project, rows)


def import_prompt_rows(*, project: Project, rows: list[dict], source: str = "api") -> ImportResult:
    """``import_prompts`` for a parsed JSON body; errors name ``line`` = index + 1."""
    cleaned = [_prompt_row(line, row, source) for line, row in _body_rows(rows)]
    return _atomically(_write_prompts, project, cleaned)


def import_completions(*, project: Project, stream: IO[bytes], filename: str) -> ImportResult:
    """Import completions (``{"prompt", "checkpoint", "text"[, "sampling", "seed"]}`` per line),
    creating prompts and checkpoints as needed, then pair completions of different checkpoints
    on the touched prompts into comparisons (``result.comparisons`` of them are new).
    """
    rows = [_completion_row(line, row) for line, row in _file_rows(stream, filename)]
    return _atomically(_write_completions, project, rows)


def import_completion_rows(*, project: Project, rows: list[dict]) -> ImportResult:
    """``import_completions`` for a parsed JSON body; errors name ``line`` = index + 1."""
    cleaned = [_completion_row(line, row) for line, row in _body_rows(rows)]
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
    rows = [_preference_row(line, row) for line, row in _file_rows(stream, filename)]
    return _atomically(_write_preferences, project, rows)
