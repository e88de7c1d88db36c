"""The OpenAPI 3.1 document of the JSON API, served at ``/api/openapi.json``."""
from __future__ import annotations

from annotate.exports import EXPORT_FORMATS, OUTPUTS
from annotate.models import Comparison, Vote

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}},
}
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
_SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict:
    return {"description": description, **_json({"$ref": "#/components/schemas/Error"})}


_IMPORT_RESULT = {
    "type": "object",
    "properties": {
        "created": {"type": "integer"},
        "skipped": {"type": "integer"},
        "comparisons": {"type": "integer"},
    },
}

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "Flywheel API",
        "version": "1",
        "description": "Collect pairwise preferences and export them for TRL, OpenRLHF and datasets. "
        "Authenticate with `Authorization: Bearer <token>` (`python manage.py create_api_token USER`).",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Message": _MESSAGE,
            "Error": _ERROR,
            "Comparison": {
                "type": "object",
                "required": ["id", "prompt", "a", "b"],
                "properties": {
                    "id": {"type": "integer"},
                    "prompt": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
                    "a": {"type": "object", "properties": {"id": {"type": "integer"}, "text": {"type": "string"}}},
                    "b": {"type": "object", "properties": {"id": {"type": "integer"}, "text": {"type": "string"}}},
                },
            },
            "VoteIn": {
                "type": "object",
                "required": ["choice"],
                "properties": {
                    "choice": {"enum": ["a", "b", "tie", "both_bad"]},
                    "strength": {"enum": [1, 2, 3], "description": "1 slightly, 2 clearly, 3 much better"},
                    "rationale": {"type": "string", "maxLength": 10000},
                    "time_spent_ms": {"type": "integer"},
                    "idempotency_key": {"type": "string", "maxLength": 64},
                    "next": {
                        "type": "boolean",
                        "description": "also reserve and return the caller's next comparison of this project",
                    },
                },
            },
            "Vote": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "comparison": {"type": "integer"},
                    "choice": {"type": "string"},
                    "winner": {"type": ["integer", "null"], "description": "id of the winning completion"},
                    "strength": {"type": ["integer", "null"]},
                    "created": {"type": "boolean"},
                    "next": {
                        "oneOf": [{"$ref": "#/components/schemas/Comparison"}, {"type": "null"}],
                        "description": "only when the vote asked for next: the next comparison, reserved like "
                        "GET .../comparisons/next, or null when nothing is left",
                    },
                },
            },
            "ImportResult": _IMPORT_RESULT,
        },
    },
    "paths": {
        "/api/projects": {
            "get": {
                "summary": "The caller's projects with counts",
                "responses": {
                    "200": {"description": "projects", **_json({"type": "object"})},
                    "401": _err("missing or bad token"),
                },
            }
        },
        "/api/projects/{slug}/comparisons/next": {
            "get": {
                "summary": "Reserve the next comparison for the caller",
                "parameters": [_SLUG],
                "responses": {
                    "200": {"description": "a comparison", **_json({"$ref": "#/components/schemas/Comparison"})},
                    "204": {"description": "nothing left for the caller"},
                    "401": _err("missing or bad token"),
                    "404": _err("no such project for the caller"),
                },
            }
        },
        "/api/comparisons/{id}/vote": {
            "post": {
                "summary": "Vote on a comparison (idempotent with idempotency_key)",
                "description": "With `\"next\": true` in the body (or `?next=1`) the answer also carries the "
                "caller's next comparison of the project, so an annotation client needs one request per pair. "
                "A replay (200) answers with the same reserved next comparison; errors carry no next.",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}},
                    {"name": "next", "in": "query", "required": False, "schema": {"type": "boolean"},
                     "description": "same as \"next\": true in the body"},
                ],
                "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/VoteIn"})},
                "responses": {
                    "201": {"description": "recorded (with next, when asked)", **_json({"$ref": "#/components/schemas/Vote"})},
                    "200": {
                        "description": "a replay: the first vote (with next, when asked)",
                        **_json({"$ref": "#/components/schemas/Vote"}),
                    },
                    "400": _err("invalid vote"),
                    "404": _err("no such comparison for the caller"),
                    "409": _err("the comparison has all its votes, or the key was used elsewhere"),
                },
            }
        },
        "/api/projects/{slug}/prompts": {
            "post": {
                "summary": "Add prompts (managers): a list of {prompt} or {messages}",
                "parameters": [_SLUG],
                "requestBody": {"required": True, **_json({"type": "array", "items": {"type": "object"}})},
                "responses": {
                    "201": {"description": "imported", **_json({"$ref": "#/components/schemas/ImportResult"})},
                    "400": _err("a row is invalid; nothing was stored"),
                    "403": _err("managers only"),
                },
            }
        },
        "/api/projects/{slug}/completions": {
            "post": {
                "summary": "Add completions (managers): a list of {prompt, checkpoint, text}",
                "parameters": [_SLUG],
                "requestBody": {"required": True, **_json({"type": "array", "items": {"type": "object"}})},
                "responses": {
                    "201": {"description": "imported", **_json({"$ref": "#/components/schemas/ImportResult"})},
                    "400": _err("a row is invalid; nothing was stored"),
                    "403": _err("managers only"),
                },
            }
        },
        "/api/projects/{slug}/export": {
            "get": {
                "summary": "Stream the preferences as JSONL (managers)",
                "parameters": [
                    _SLUG,
                    {"name": "format", "in": "query", "schema": {"enum": list(EXPORT_FORMATS), "default": "trl"}},
                    {"name": "output", "in": "query", "schema": {"enum": list(OUTPUTS), "default": "jsonl"}},
                    {"name": "sources", "in": "query", "explode": True,
                     "schema": {"type": "array", "items": {"enum": list(Vote.Source.values)}}},
                    {"name": "reasons", "in": "query", "explode": True,
                     "schema": {"type": "array", "items": {"enum": list(Comparison.Reason.values)}}},
                    {"name": "after", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "before", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "closed_only", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "metadata", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "real_names", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": {"description": "the export: JSONL streamed, or a Parquet file",
                            "content": {"application/jsonl": {}, "application/vnd.apache.parquet": {}}},
                    "400": _err("a bad parameter: the message names it; nothing was exported"),
                    "401": _err("no valid bearer token"),
                    "403": _err("managers only"),
                    "404": _err("no such project, or not a member"),
                },
            }
        },
        "/api/projects/{slug}/events": {
            "get": {
                "summary": "The project's events as server-sent events (members)",
                "description": "Stored events (snapshot.frozen, run.state_changed, checkpoint.published, "
                               "checkpoint.promoted, and vote.recorded while a webhook wants it), each with its id, "
                               "plus votes.progress counts. The response ends after EVENTS_STREAM_SECONDS; "
                               "reconnect with Last-Event-ID (or ?after=ID) to go on where it stopped.",
                "parameters": [
                    _SLUG,
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}},
                    {"name": "after", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": {"description": "an event stream", "content": {"text/event-stream": {}}},
                    "401": _err("no valid bearer token"),
                    "404": _err("no such project, or not a member"),
                },
            }
        },
    },
}
