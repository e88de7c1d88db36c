"""The annotation side of the JSON API (django-ninja): thin routes over the same services as the pages.

``config.api`` mounts this router and ``training.api``'s under ``/api/`` and generates the OpenAPI
document from them (``/api/openapi.json``). Why django-ninja and not Django REST framework with
drf-spectacular: the API is a dozen function views over services that already validate; ninja
keeps them functions (one decorator each), generates OpenAPI 3.1 from type hints and pydantic v2
(installed already), and adds less per request than DRF's class views, parsers, renderers and
content negotiation, which matters on the vote path (docs/benchmarks.md). DRF's strengths
(browsable API, model serializers, viewsets over models) fit an API that exposes models for
editing, which this one does not.

The hot pair (next comparison, vote) answers with a ``JsonResponse`` built by hand, as before:
ninja passes a response through, so its pydantic validation is not paid per vote; the schemas
still describe those answers, and a test validates real answers against the generated document.
"""
from __future__ import annotations

import json
import logging
from functools import wraps

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from ninja import Query, Router, Status

from annotate import access, imports, selectors
from annotate import api_schemas as s
from annotate.api_common import (
    BEARER,
    BEARER_COMPARISON,
    BEARER_PROJECT,
    PageIn,
    body_doc,
    json_body,
    page,
    query_doc,
    too_big_message,
    wants_next,
)
from annotate.api_problems import ApiError, problem, problems
from annotate.edits import EditError, edit_record
from annotate.exports import EXPORT_FORMATS, OUTPUTS
from annotate.models import Comparison, Project, Snapshot, Vote
from annotate.queue import comparison_next, comparison_skip
from annotate.services import InvalidInput
from annotate.tokens import Caller, caller_for_token
from annotate.views_manage import export_response
from annotate.votes import ComparisonFull, IdempotencyConflict, NotVotable, VoteError, vote_record
from config.throttle import api_call_allowed

log = logging.getLogger(__name__)
router = Router(tags=["annotation"])

_VOTE_CODES = ((ComparisonFull, "comparison_full"), (IdempotencyConflict, "idempotency_conflict"),
               (NotVotable, "not_votable"))


def _annotator_project(caller: Caller) -> Project:
    """The project the URL names, if the caller may annotate it (what access.project_for_annotator
    means: members and staff pass; anyone else gets a 404, so slugs don't leak)."""
    if not caller.may_annotate():
        raise Http404("No such project.")
    return caller.project


def _comparison_call(request: HttpRequest, comparison_id: int, example: str, *,
                     optional: bool = False) -> tuple[Caller, Project, dict | None]:
    """The caller, their project and the JSON object body of a call on one comparison (404 when the comparison
    or the project is not theirs to see; 400 naming ``example`` for a body that is not an object). An
    ``optional`` body may be left out (None)."""
    caller = request.caller
    if not caller.comparison_exists:
        raise Http404(f"comparison {comparison_id} does not exist")
    project = _annotator_project(caller)
    if optional and request.content_type != "application/json":
        return caller, project, None
    body = json_body(request)
    if not isinstance(body, dict):
        raise ApiError("invalid_request", f"the body must be {'empty or ' if optional else ''}a JSON object like "
                                          f"{example}")
    return caller, project, body


def _comparison_json(comparison) -> dict:
    # The queue read the prompt and both texts with the comparison (see annotate.queue).
    return {
        "id": comparison.pk,
        "prompt": comparison.prompt_messages,
        "a": {"id": comparison.completion_a_id, "text": comparison.text_a},
        "b": {"id": comparison.completion_b_id, "text": comparison.text_b},
    }


def _next_json(caller: Caller, project: Project) -> dict | None:
    following = comparison_next(project=project, annotator=caller.user, holds_lease=caller.holds_lease)
    return None if following is None else _comparison_json(following)


_NEXT_QUERY = {"parameters": [{"name": "next", "in": "query", "required": False, "schema": {"type": "boolean"},
                               "description": 'same as "next": true in the body'}]}


@router.get("/projects", auth=BEARER, url_name="api-projects", response={200: s.ProjectPage, **problems(400)},
            summary="The caller's projects with counts")
def projects(request: HttpRequest, params: Query[PageIn]):
    rows = access.projects_of(request.user)
    body = page(request, rows, params, "projects", lambda p: p)
    counts = selectors.project_counts([p.pk for p in body["projects"]])
    body["projects"] = [{"slug": p.slug, "name": p.name, "role": p.my_role, **counts[p.pk]} for p in body["projects"]]
    return body


@router.get("/projects/{slug:slug}/comparisons/next", auth=BEARER_PROJECT, url_name="api-next",
            response={200: s.Comparison, 204: None, **problems(404)},
            summary="Reserve the next comparison for the caller (members)")
def comparison_next_view(request: HttpRequest, slug: str):
    caller = request.caller
    project = _annotator_project(caller)
    comparison = comparison_next(project=project, annotator=caller.user, holds_lease=caller.holds_lease)
    if comparison is None:
        return HttpResponse(status=204)
    return JsonResponse(_comparison_json(comparison))


@router.post("/comparisons/{int:comparison_id}/vote", auth=BEARER_COMPARISON, url_name="api-vote",
             response={201: s.Vote, 200: s.Vote, **problems(400, 404, 409, 413)},
             summary="Vote on a comparison (idempotent with idempotency_key)",
             openapi_extra={**body_doc(s.VoteIn), **_NEXT_QUERY})
def vote(request: HttpRequest, comparison_id: int):
    """With `"next": true` in the body (or `?next=1`) the answer also carries the caller's next
    comparison of the project (`"next": null` when nothing is left), so an annotation client needs
    one request per pair. A replay (200) answers with the same reserved next comparison; errors carry
    no next."""
    caller, project, body = _comparison_call(request, comparison_id, '{"choice": "a"}')
    try:
        outcome = vote_record(
            annotator=caller.user,
            comparison_id=comparison_id,
            choice=body.get("choice", ""),
            strength=body.get("strength"),
            rationale="" if body.get("rationale") is None else body["rationale"],
            time_spent_ms=body.get("time_spent_ms"),
            idempotency_key="" if body.get("idempotency_key") is None else body["idempotency_key"],
        )
    except VoteError as error:
        code = next((c for kind, c in _VOTE_CODES if isinstance(error, kind)), None)
        raise ApiError(code or ("invalid_vote" if error.status == 400 else "conflict" if error.status == 409
                                else "not_found"), str(error), status=error.status) from None
    cast = outcome.vote
    payload = {"id": cast.pk, "comparison": cast.comparison_id, "choice": cast.choice, "winner": cast.winner_id,
               "strength": cast.strength, "created": outcome.created}
    if wants_next(request, body):
        # After the vote's own transaction (and its retrain check) has committed. The lease the
        # vote released does not count; one held on another pair is handed out again.
        payload["next"] = _next_json(caller, project)
    return JsonResponse(payload, status=201 if outcome.created else 200)


@router.post("/comparisons/{int:comparison_id}/edit", auth=BEARER_COMPARISON, url_name="api-edit",
             response={201: s.Edit, 200: s.Edit, **problems(400, 404, 409, 413)},
             summary="Edit the better answer of a comparison: the edit is preferred to the original (members)",
             openapi_extra={**body_doc(s.EditIn), **_NEXT_QUERY})
def edit(request: HttpRequest, comparison_id: int):
    """The edited text becomes a completion of the project's `human-edit` checkpoint and a closed
    comparison edited ≻ original with the caller's vote. Unless the caller voted on this comparison
    already, the edit also votes for `side` on it. Only a comparison shown to the caller (leased or
    voted on) can be edited. A replay of the same edit answers 200 and stores nothing."""
    caller, project, body = _comparison_call(request, comparison_id, '{"side": "a", "text": "..."}')
    comparison = Comparison.objects.select_related("project", "completion_a", "completion_b").filter(
        pk=comparison_id).first()
    if comparison is None:  # removed since the token's statement read it
        raise Http404(f"comparison {comparison_id} does not exist")
    key = body.get("idempotency_key")
    try:
        outcome = edit_record(comparison=comparison, annotator=caller.user, side=body.get("side", ""),
                              text=body.get("text"), idempotency_key="" if key is None else key)
    except EditError as error:
        code = {404: "not_found", 409: "not_editable"}.get(error.status, "invalid_edit")
        raise ApiError(code, str(error), status=error.status) from None
    except VoteError as error:
        code = next((c for kind, c in _VOTE_CODES if isinstance(error, kind)), None)
        raise ApiError(code or ("invalid_vote" if error.status == 400 else "conflict"), str(error),
                       status=error.status) from None
    cast = outcome.original_vote
    payload = {
        "completion": outcome.completion.pk, "edited_from": outcome.completion.edited_from_id,
        "comparison": outcome.comparison.pk, "vote": outcome.vote.pk, "vote_note": outcome.vote_note,
        "original_vote": None if cast is None else {
            "id": cast.pk, "comparison": cast.comparison_id, "choice": cast.choice, "winner": cast.winner_id,
            "strength": cast.strength, "created": outcome.original_vote_created},
        "created": outcome.created,
    }
    if wants_next(request, body):
        payload["next"] = _next_json(caller, project)
    return JsonResponse(payload, status=201 if outcome.created else 200)


@router.post("/comparisons/{int:comparison_id}/skip", auth=BEARER_COMPARISON, url_name="api-skip",
             response={200: s.Skipped, **problems(400, 404)}, exclude_unset=True,
             summary="Skip a comparison: release the caller's lease; it is not offered to them again (members)",
             openapi_extra={**body_doc(s.SkipIn, "optional"), **_NEXT_QUERY})
def skip(request: HttpRequest, comparison_id: int):
    caller, project, body = _comparison_call(request, comparison_id, '{"next": true}', optional=True)
    comparison = Comparison.objects.only("id").filter(pk=comparison_id).first()
    if comparison is None:  # removed since the token's statement read it
        raise Http404(f"comparison {comparison_id} does not exist")
    comparison_skip(comparison=comparison, annotator=caller.user)
    payload = {"comparison": comparison_id, "skipped": True}
    if wants_next(request, body):
        payload["next"] = _next_json(caller, project)
    return payload


def _rows_import(request: HttpRequest, slug: str, importer) -> Status:
    project = access.project_for_manager(request.user, slug)
    body = json_body(request, limit=settings.IMPORT_MAX_BYTES)
    rows = body.get("items") if isinstance(body, dict) else body
    if not isinstance(rows, list):
        raise ApiError("invalid_request", 'send a JSON list of rows, or {"items": [...]}')
    try:
        result = importer(project=project, rows=rows)
    except imports.InvalidInput as error:
        raise ApiError("invalid_request", f"nothing was imported: {error}") from None
    return Status(201, result.as_dict())


_IMPORT_ERRORS = problems(400, 403, 404, 413)


@router.post("/projects/{slug:slug}/prompts", auth=BEARER, url_name="api-prompts",
             response={201: s.ImportResult, **_IMPORT_ERRORS},
             summary="Add prompts (managers): a list of {prompt} or {messages}, or {\"items\": [...]}",
             openapi_extra=body_doc(s.PromptRow, rows=True))
def prompts_import(request: HttpRequest, slug: str):
    return _rows_import(request, slug, imports.import_prompt_rows)


@router.post("/projects/{slug:slug}/completions", auth=BEARER, url_name="api-completions",
             response={201: s.ImportResult, **_IMPORT_ERRORS},
             summary="Add completions (managers): a list of {prompt, checkpoint, text}, or {\"items\": [...]}",
             openapi_extra=body_doc(s.CompletionRow, rows=True))
def completions_import(request: HttpRequest, slug: str):
    return _rows_import(request, slug, imports.import_completion_rows)


# Parsed by views_manage.export_params, shared with the export page (its messages name each parameter).
_EXPORT_QUERY = [
    query_doc("format", {"enum": list(EXPORT_FORMATS), "default": "trl"}),
    query_doc("output", {"enum": list(OUTPUTS), "default": "jsonl"}),
    {**query_doc("sources", {"type": "array", "items": {"enum": list(Vote.Source.values)}}), "explode": True},
    {**query_doc("reasons", {"type": "array", "items": {"enum": list(Comparison.Reason.values)}}), "explode": True},
    query_doc("after", {"type": "string", "format": "date-time"}),
    query_doc("before", {"type": "string", "format": "date-time"}),
    query_doc("closed_only", {"type": "boolean"}),
    query_doc("metadata", {"type": "boolean"}),
    query_doc("real_names", {"type": "boolean"}, "annotators' names instead of pseudonyms"),
    query_doc("aggregation", {"enum": ["majority", "model"], "default": "majority"},
              "how several votes on a pair become one label: the majority, or the reliability model's posterior"),
    query_doc("confidence", {"type": "boolean"}, "a confidence column (with aggregation=model)"),
]
_EXPORT_OK = {"description": "the export: JSONL streamed, or a Parquet file",
              "content": {"application/jsonl": {}, "application/vnd.apache.parquet": {}}}


@router.get("/projects/{slug:slug}/export", auth=BEARER, url_name="api-export",
            response={200: None, **problems(400, 403, 404)},
            summary="Stream the preferences as JSONL or Parquet (managers)",
            openapi_extra={"parameters": _EXPORT_QUERY, "responses": {"200": _EXPORT_OK}})
def export(request: HttpRequest, slug: str):
    project = access.project_for_manager(request.user, slug)
    try:  # the same parameters as the manager's export page (views_manage.export_params)
        return export_response(project, request.GET)
    except InvalidInput as error:
        raise ApiError("invalid_parameters", f"nothing was exported: {error}") from None


@router.get("/projects/{slug:slug}/snapshots", auth=BEARER, url_name="api-snapshots",
            response={200: s.SnapshotPage, **problems(400, 403, 404)},
            summary="The project's frozen dataset snapshots, newest first (managers)")
def snapshots(request: HttpRequest, slug: str, params: Query[PageIn]):
    project = access.project_for_manager(request.user, slug)
    rows = Snapshot.objects.filter(project=project).order_by("-created_at", "-id")
    return page(request, rows, params, "snapshots", lambda snap: snap)


def api_view(view=None, *, scope: str = ""):
    """The same bearer-token rules for a plain Django view (the event stream, which streams its own
    response): ``request.caller`` as with the routes, every refusal a problem (api_problems)."""
    if view is None:
        return lambda view: api_view(view, scope=scope)

    @csrf_exempt  # Bearer tokens are not sent by browsers on their own, so CSRF does not apply.
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            header = request.META.get("HTTP_AUTHORIZATION", "")
            scheme, _, raw = header.partition(" ")
            caller = None
            if scheme.lower() == "bearer":
                caller = caller_for_token(
                    raw.strip(),
                    slug=kwargs.get("slug") if scope == "project" else None,
                    comparison_id=kwargs.get("comparison_id") if scope == "comparison" else None,
                )
            if caller is None:
                return unauthenticated(request)
            refused = api_call_allowed(raw.strip())
            if refused is not None:
                return problem(request, "throttled", json.loads(refused.content)["error"],
                               headers={"Retry-After": refused["Retry-After"]})
            request.user, request.caller = caller.user, caller
            return view(request, *args, **kwargs)
        except Http404 as error:
            return problem(request, "not_found", str(error) or "not found")
        except PermissionDenied as error:
            return problem(request, "forbidden", str(error) or "forbidden")
        except (OperationalError, InterfaceError):  # the database restarts, or is out of reach
            return database_unavailable(request)
        except RequestDataTooBig:
            return problem(request, "payload_too_large", too_big_message())

    return wrapper


def unauthenticated(request: HttpRequest) -> JsonResponse:
    return problem(request, "not_authenticated", "a valid bearer token is required "
                   "(python manage.py create_api_token USER)", headers={"WWW-Authenticate": "Bearer"})


def database_unavailable(request: HttpRequest) -> JsonResponse:
    log.warning("API %s %s: the database did not answer", request.method, request.path, exc_info=True)
    return problem(request, "database_unavailable", "the database is unreachable for the moment; nothing was "
                   "stored; try again", headers={"Retry-After": "1"})
