"""What no database column can hold, found before anything is written: one check for every input.

PostgreSQL refuses a NUL character in text (and in JSON), a lone surrogate does not encode as UTF-8,
JSON columns take no NaN or infinity, and deep nesting only serves to exhaust a parser. Each input's
own validation (a vote, an import row, a run's start request) calls ``unstorable`` and turns its answer
into that input's error, naming the field.
"""
from __future__ import annotations

import math
from typing import Any

from django.conf import settings

MAX_DEPTH = 20


def form_id(raw: str):
    """A form field that should hold a database id: the int, or the raw text for the service to refuse by
    name (a number too long for a 64-bit id stays text, so it cannot overflow a query)."""
    return int(raw) if raw.isdecimal() and len(raw) < 19 else raw


def unstorable(value: Any, field: str, *, depth: int = 0) -> tuple[str, str] | None:
    """(field path, what is wrong) for the first thing in ``value`` no column can hold; None when all can."""
    if depth > MAX_DEPTH:
        return field, f"is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, str):
        if "\x00" in value:
            return field, "holds a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field, "holds a lone surrogate (not valid Unicode text)"
    elif isinstance(value, float) and not math.isfinite(value):
        return field, "must be a finite number, not NaN or an infinity"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := unstorable(item, f"{field}[{i}]", depth=depth + 1):
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if found := unstorable(key, f"{field} (a key)", depth=depth + 1) or unstorable(
                    item, f"{field}.{key}", depth=depth + 1):
                return found
    return None


def oversized(text: str) -> str | None:
    """What is wrong with a text longer than TEXT_MAX_CHARS (every annotator shown it would wait while it
    renders), or None when it fits."""
    limit = settings.TEXT_MAX_CHARS
    if len(text) > limit:
        return f"is {len(text):,} characters; one text may hold at most {limit:,} (TEXT_MAX_CHARS)"
    return None
