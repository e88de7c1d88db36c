"""Reading and validating import input: files or JSON bodies into checked rows, nothing written.

The writing half, and the contract every import keeps, are in ``annotate.imports``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import IO, Any

from django.conf import settings

from annotate.boundary import oversized, unstorable
from annotate.services import InvalidInput, messages_clean

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
        except RecursionError:  # thousands of nested brackets: no row means them
            raise ImportFailed("invalid JSON: nested too deeply", line=number) from None
    return rows


def _csv(text: str) -> list[tuple[int, Any]]:
    # strict: a quote that is never closed is an error, not a field that swallows the rest of the file.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    start = 1  # the line the row being read begins on
    try:
        header = [name.strip() for name in reader.fieldnames or []]
        if "prompt" not in header:
            raise ImportFailed('the header row must name a "prompt" column', line=1, field="prompt")
        reader.fieldnames = header
        rows = []
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return rows
            rows.append((reader.line_num, _csv_row(row)))
    except csv.Error as error:
        if "unexpected end of data" in str(error) or "field larger than field limit" in str(error):
            raise ImportFailed('a quoted cell opens here and its closing " never comes (the rest of the file would '
                               'be one cell): close it, or double a " inside it', line=start) from None
        raise ImportFailed(f"invalid CSV: {error}", line=max(start, reader.line_num)) from None


def _csv_row(row: dict) -> dict:
    row = {key: value for key, value in row.items() if key is not None}  # None: cells beyond the header
    tags = row.get("tags") or ""
    row["tags"] = [tag.strip() for tag in re.split(r"[,;]", tags) if tag.strip()]  # "a, b; c"
    return row


def file_rows(stream: IO[bytes], filename: str, *, csv_ok: bool = False) -> list[tuple[int, Any]]:
    is_csv = PurePath(filename).suffix.lower() == ".csv"
    if is_csv and not csv_ok:
        raise ImportFailed("this import reads JSONL only (one JSON object per line), not CSV")
    text = _decode(_read(stream))
    rows = _csv(text) if is_csv else _jsonl(text)
    if not rows:
        raise ImportFailed("the file holds no rows")
    return rows


def body_rows(rows: Any) -> list[tuple[int, Any]]:
    if not isinstance(rows, list) or not rows:
        raise ImportFailed("rows must be a non-empty list of objects")
    return list(enumerate(rows, start=1))


# --- validating one row ------------------------------------------------------------------------


def _object(line: int, row: Any) -> dict:
    if not isinstance(row, dict):
        raise ImportFailed("must be a JSON object", line=line)
    for key, value in row.items():
        if found := unstorable(value, str(key)):
            raise ImportFailed(found[1], line=line, field=found[0])
    return row


def _text(value: Any, *, line: int, field: str) -> str:
    if not isinstance(value, str):
        raise ImportFailed("is missing" if value is None else "must be a string", line=line, field=field)
    if not value.strip():
        raise ImportFailed("must not be empty", line=line, field=field)
    return _sized(value, line=line, field=field)


def _sized(value: str, *, line: int, field: str) -> str:
    """A text no longer than TEXT_MAX_CHARS (``boundary.oversized``)."""
    if problem := oversized(value):
        raise ImportFailed(problem, line=line, field=field)
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
        _sized(message["content"], line=line, field=f"{field}[{i}].content" if isinstance(value, list) else field)
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


def prompt_row(line: int, row: Any, default_source: str) -> tuple[list[dict], str, list[str]]:
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
class CompletionRow:
    messages: list[dict]
    checkpoint: str
    text: str
    sampling: dict
    seed: int | None


def completion_row(line: int, row: Any) -> CompletionRow:
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
    return CompletionRow(messages, checkpoint, text, sampling, seed)


@dataclass(frozen=True)
class PreferenceRow:
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


def preference_row(line: int, row: Any) -> PreferenceRow:
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
    strength = None if margin is None else min(3, max(1, 1 + round(2 * min(margin, 1.0))))
    return PreferenceRow(messages, chosen, rejected, strength)


@dataclass(frozen=True)
class GoldRow:
    line: int
    messages: list[dict]
    chosen: str
    rejected: str


def gold_row(line: int, row: Any) -> GoldRow:
    """A gold pair (``annotate.gold``): ``{"prompt": text or messages, "chosen": the better answer,
    "rejected": the worse}``, with every check an import row gets (NUL, lone surrogates, nesting, empty
    texts, TEXT_MAX_CHARS)."""
    row = _object(line, row)
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in row]
    if missing:
        raise ImportFailed(f"needs prompt, chosen and rejected ({', '.join(missing)} missing)", line=line)
    messages = _messages(row["prompt"], line=line, field="prompt")
    chosen = _text(row["chosen"], line=line, field="chosen")
    rejected = _text(row["rejected"], line=line, field="rejected")
    if chosen == rejected:
        raise ImportFailed("chosen and rejected are the same text", line=line, field="rejected")
    return GoldRow(line, messages, chosen, rejected)
