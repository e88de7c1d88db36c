"""What every route of the JSON API shares: bearer-token auth, pagination, JSON bodies.

Auth: ``Authorization: Bearer <token>``. ``caller_for_token`` reads the token, its user and, with
a scope, the URL's project and the caller's role in it in ONE statement; the auth class reads the
slug or comparison id from the resolved URL, so the route needs no second lookup.

Pagination: limit/offset (``?limit=50&offset=0``; ``limit`` at most ``PAGE_MAX``). A page answers
``count`` (all rows), ``limit``, ``offset`` and ``next`` (the URL of the next page, or null). Offsets
suit these lists: they are short (a project's runs, checkpoints, snapshots), ordered on a stable
key, and the console pages them the same way; a cursor would only pay off for the vote history.
"""
from __future__ import annotations

import json
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest
from ninja import Schema
from ninja.security import HttpBearer
from pydantic import Field

from annotate.api_problems import ApiError
from annotate.tokens import Caller, caller_for_token
from config.throttle import api_call_allowed

PAGE_DEFAULT = 50
PAGE_MAX = 200


class Bearer(HttpBearer):
    """The API's bearer token. ``scope="project"`` also reads the project named by the URL's ``slug``
    and the caller's role in it; ``scope="comparison"`` the project of ``comparison_id``.

    Sets ``request.user`` (the API's handler has no session middleware) and ``request.caller``.
    """

    def __init__(self, scope: str = "") -> None:
        super().__init__()
        self.scope = scope

    def __call__(self, request: HttpRequest) -> Caller | None:
        scheme, _, raw = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.authenticate(request, raw.strip())

    def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        kwargs = request.resolver_match.kwargs if request.resolver_match else {}
        caller = caller_for_token(
            token,
            slug=kwargs.get("slug") if self.scope == "project" else None,
            comparison_id=kwargs.get("comparison_id") if self.scope == "comparison" else None,
        )
        if caller is None:
            return None
        refused = api_call_allowed(token)
        if refused is not None:
            raise ApiError("throttled", json.loads(refused.content)["error"],
                           headers={"Retry-After": refused["Retry-After"]})
        request.user, request.caller = caller.user, caller
        return caller


BEARER = Bearer()
BEARER_PROJECT = Bearer("project")
BEARER_COMPARISON = Bearer("comparison")


class PageIn(Schema):
    limit: int = Field(PAGE_DEFAULT, ge=1, le=PAGE_MAX, description=f"rows per page, at most {PAGE_MAX}")
    offset: int = Field(0, ge=0, description="rows to skip")


class PageOut(Schema):
    count: int = Field(description="rows in the whole list")
    limit: int
    offset: int
    next: str | None = Field(description="the next page's URL, or null on the last page")


def page(request: HttpRequest, rows, params: PageIn, key: str, row_json) -> dict:
    """One page of ``rows`` (a QuerySet or a list, already ordered) as ``{key: [...], count, limit,
    offset, next}``; ``row_json`` turns a row into its JSON object."""
    count = rows.count() if hasattr(rows, "count") and not isinstance(rows, list) else len(rows)
    chunk = rows[params.offset : params.offset + params.limit]
    following = params.offset + params.limit
    next_url = None
    if following < count:
        query = request.GET.copy()
        query["offset"], query["limit"] = str(following), str(params.limit)
        next_url = f"{request.path}?{urlencode(sorted(query.items()))}"
    return {key: [row_json(row) for row in chunk], "count": count, "limit": params.limit,
            "offset": params.offset, "next": next_url}


def json_body(request: HttpRequest, *, limit: int | None = None):
    """The body as JSON (an empty body reads as null). With ``limit`` (an import's IMPORT_MAX_BYTES)
    it is read from the stream up to that many bytes, instead of Django's in-memory limit for every
    request body (``RequestDataTooBig``, answered as a 413)."""
    if limit is None:
        raw = request.body
    else:
        raw = request.read(limit + 1)
        if len(raw) > limit:
            raise ApiError("payload_too_large", f"the request body is over {limit:,} bytes (IMPORT_MAX_BYTES); "
                           "nothing was imported: send the rows in several requests")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError("invalid_json", "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError("invalid_json", "the request body is nested too deeply") from None


REF = "#/components/schemas/{model}"
BODY_SCHEMAS: dict[str, dict] = {}  # request bodies' schemas, merged into the document's components


def body_doc(schema, description: str = "", *, rows: bool = False) -> dict:
    """An operation's request body in the document, from the pydantic ``schema``, where a service
    parses the body itself (its messages name each bad field). ``rows``: a list of them, or
    ``{"items": [...]}``."""
    described = schema.model_json_schema(ref_template=REF)
    for name, nested in described.pop("$defs", {}).items():
        BODY_SCHEMAS.setdefault(name, nested)
    BODY_SCHEMAS[schema.__name__] = described
    ref = {"$ref": REF.format(model=schema.__name__)}
    if rows:
        many = {"type": "array", "items": ref}
        ref = {"oneOf": [many, {"type": "object", "required": ["items"], "properties": {"items": many}}]}
    content = {"application/json": {"schema": ref}}
    return {"requestBody": {"required": not description, "description": description, "content": content}}


def query_doc(name: str, schema: dict, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def too_big_message() -> str:
    return (f"the request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes "
            "(UPLOAD_MAX_MEMORY_BYTES); nothing was stored")


def wants_next(request: HttpRequest, body) -> bool:
    flag = request.GET.get("next", "")
    return (isinstance(body, dict) and body.get("next") is True) or flag.lower() in {"1", "true", "yes"}
