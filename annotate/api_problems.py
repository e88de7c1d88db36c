"""Every error of the JSON API in one shape: RFC 9457 problem details with a stable code.

    {"type": "urn:flywheel:problem:not_found", "title": "Not found", "status": 404,
     "detail": "No such project.", "code": "not_found", "error": "No such project."}

``code`` is what a client branches on; it never changes for a given kind of refusal. ``detail``
is the sentence for the person (it may be reworded); ``error`` repeats it, as every error of
this API carried ``{"error": ...}`` before, and clients read it. The media type is
``application/problem+json`` when the request's ``Accept`` names it, else ``application/json``
(what clients of the first API were told to expect).
"""
from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from ninja import Schema
from pydantic import Field

PROBLEM_TYPE = "urn:flywheel:problem:"

# code -> (HTTP status, title). A code is added, never renamed or reused.
CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "The body is not valid JSON"),
    "invalid_request": (400, "The request is invalid"),
    "invalid_parameters": (400, "A parameter is invalid"),
    "invalid_vote": (400, "The vote is invalid"),
    "not_authenticated": (401, "A valid bearer token is required"),
    "forbidden": (403, "Not allowed"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "comparison_full": (409, "The comparison has all its votes"),
    "idempotency_conflict": (409, "The idempotency key was used for another vote"),
    "not_votable": (409, "The comparison is out of the queue"),
    "invalid_edit": (400, "The edit is invalid"),
    "not_editable": (409, "The comparison's answers cannot be edited"),
    "conflict": (409, "Conflict"),
    "payload_too_large": (413, "The body is too large"),
    "throttled": (429, "Too many requests"),
    "internal_error": (500, "Internal server error"),
    "database_unavailable": (503, "The database is unreachable"),
}
TITLES = {status: title for status, title in CODES.values()}  # for a status with no finer code


class ApiError(Exception):
    """Raised anywhere under a route: answered as a problem (``config.api`` registers the handler)."""

    def __init__(self, code: str, detail: str, *, status: int | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.code, self.detail, self.headers = code, detail, headers or {}
        self.status = status or CODES[code][0]


def problem(request: HttpRequest | None, code: str, detail: str, *, status: int | None = None,
            headers: dict | None = None) -> JsonResponse:
    status = status or CODES[code][0]
    title = CODES[code][1] if code in CODES and CODES[code][0] == status else TITLES.get(status, "Error")
    body = {"type": PROBLEM_TYPE + code, "title": title, "status": status, "detail": detail, "code": code,
            "error": detail}
    accept = request.META.get("HTTP_ACCEPT", "") if request is not None else ""
    content_type = "application/problem+json" if "application/problem+json" in accept else "application/json"
    response = JsonResponse(body, status=status, content_type=content_type)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class Problem(Schema):
    """RFC 9457 problem details, plus ``code`` (stable) and ``error`` (the same text as ``detail``)."""

    type: str = Field(description="urn:flywheel:problem:<code>")
    title: str
    status: int
    detail: str = Field(description="what went wrong, for a person")
    code: str = Field(description="stable: one of " + ", ".join(CODES))
    error: str = Field(description="the same text as detail (the first API's error key)")


def problems(*statuses: int) -> dict[int, type[Problem]]:
    """Response declarations for an operation's error statuses (401 and 429 go on every
    authenticated operation, 503 on every operation, by ``config.api``)."""
    return {status: Problem for status in statuses}
