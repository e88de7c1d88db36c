"""The JSON shapes of the annotation API, as pydantic schemas: the OpenAPI document is generated from them.

Request bodies are described here but parsed by the services (``vote_record``, the importers), whose
messages name each bad field; the vote's answer is written by hand on the hot path and a test holds
it to ``Vote`` (tests/annotate/test_api_openapi.py).
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from ninja import Schema
from pydantic import Field

from annotate.api_common import PageOut
from annotate.votes import TIME_SPENT_MAX_MS


class Message(Schema):
    role: Literal["system", "user", "assistant"]
    content: str


class Side(Schema):
    id: int = Field(description="the completion's id")
    text: str


class Comparison(Schema):
    id: int
    prompt: list[Message]
    a: Side
    b: Side


class VoteIn(Schema):
    choice: Literal["a", "b", "tie", "both_bad"]
    strength: Literal[1, 2, 3] | None = Field(None, description="1 slightly, 2 clearly, 3 much better")
    rationale: str | None = Field(None, max_length=10_000, description="why; no NUL character or lone surrogate")
    time_spent_ms: int | None = Field(None, ge=0, le=TIME_SPENT_MAX_MS,
                                      description="milliseconds spent on the pair, at most a week")
    idempotency_key: str | None = Field(
        None, max_length=64,
        description="a replay with the same key and the same choice answers 200 with the first vote "
                    "(created: false); the same key with a different choice, on another comparison, or of a "
                    "vote that was undone answers 409 and records nothing")
    next: bool = Field(False, description="also reserve and return the caller's next comparison of this project")


class Vote(Schema):
    id: int
    comparison: int
    choice: str
    winner: int | None = Field(description="id of the winning completion")
    strength: int | None
    created: bool = Field(description="false for a replay")
    next: Comparison | None = Field(None, description="only when the vote asked for next: the next comparison, "
                                    "reserved like GET .../comparisons/next, or null when nothing is left")


class EditIn(Schema):
    side: Literal["a", "b"] = Field(description="the answer edited: the better one of the pair")
    text: str = Field(description="the improved answer (raw text, as stored; at most TEXT_MAX_CHARS characters)")
    idempotency_key: str | None = Field(None, max_length=64, description="for the vote on the pair edited from, "
                                        "cast when the caller has not voted on it yet")
    next: bool = Field(False, description="also reserve and return the caller's next comparison of this project")


class Edit(Schema):
    completion: int = Field(description="id of the new completion (checkpoint human-edit, edited_from the original)")
    edited_from: int = Field(description="id of the original completion")
    comparison: int = Field(description="id of the closed comparison edited vs original")
    vote: int = Field(description="id of the caller's vote on it, for the edited side")
    original_vote: Vote | None = Field(description="the caller's vote on the pair edited from: cast by this edit "
                                       "(created true) or given before; null when it could not be recorded")
    vote_note: str = Field(description="why the vote on the pair edited from was not recorded, or empty")
    created: bool = Field(description="false for a replay: nothing was stored")
    next: Comparison | None = Field(None, description="only when the edit asked for next: the next comparison, "
                                    "reserved like GET .../comparisons/next, or null when nothing is left")


class SkipIn(Schema):
    next: bool = Field(False, description="also reserve and return the caller's next comparison of this project")


class Skipped(Schema):
    comparison: int
    skipped: Literal[True]
    next: Comparison | None = Field(None, description="only when asked for next: the next comparison, or null")


class Project(Schema):
    slug: str
    name: str
    role: str = Field(description="the caller's role: annotator or manager")
    prompts: int
    comparisons: int
    open: int
    votes: int


class ProjectPage(PageOut):
    projects: list[Project]


class PromptRow(Schema):
    prompt: str | None = Field(None, description="a single user turn; or messages")
    messages: list[Message] | None = None
    source: str | None = None
    tags: list[str] | None = None


class CompletionRow(Schema):
    prompt: str | list[Message]
    checkpoint: str = Field(description="its name; created when new")
    text: str
    sampling: dict | None = None
    seed: int | None = None


class ImportResult(Schema):
    created: int
    skipped: int
    comparisons: int


class Snapshot(Schema):
    id: int
    format: str
    count: int = Field(description="rows in the file")
    votes: int = Field(description="votes it was built from")
    sha256: str
    uri: str
    filters: dict
    created_at: datetime


class SnapshotPage(PageOut):
    snapshots: list[Snapshot]
