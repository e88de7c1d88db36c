"""The JSON API: bearer-token auth, thin views over the same services as the web pages.

Described by ``annotate.openapi.SPEC`` at ``/api/openapi.json``.
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
from django.views.decorators.http import require_GET, require_POST

from annotate import access, imports, selectors
from annotate.models import Project
from annotate.queue import comparison_next
from annotate.services import InvalidInput
from annotate.tokens import Caller, caller_for_token
from annotate.views_manage import export_response
from annotate.votes import VoteError, vote_record
from config.throttle import api_call_allowed

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def api_view(view=None, *, scope: str = ""):
    """Authenticate by ``Authorization: Bearer <token>`` and turn access errors into JSON.

    With ``scope="project"`` (the URL's ``slug``) or ``scope="comparison"`` (its
    ``comparison_id``), the token lookup also reads that project and the caller's role
    in it, in the same statement, as ``request.caller`` (a ``tokens.Caller``).
    """
    if view is None:
        return lambda view: api_view(view, scope=scope)

    @csrf_exempt  # Bearer tokens are not sent by browsers on their own, so CSRF does not apply.
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return authenticated(request, *args, **kwargs)
        except (OperationalError, InterfaceError):  # the database restarts, or is out of reach
            log.warning("API %s %s: the database did not answer", request.method, request.path, exc_info=True)
            response = _error(503, "the database is unreachable for the moment; nothing was stored; try again")
            response["Retry-After"] = "1"
            return response
        except RequestDataTooBig:
            return _error(413, f"the request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes "
                               "(UPLOAD_MAX_MEMORY_BYTES); nothing was stored")

    def authenticated(request: HttpRequest, *args, **kwargs) -> HttpResponse:
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
            response = _error(401, "a valid bearer token is required (python manage.py create_api_token USER)")
            response["WWW-Authenticate"] = "Bearer"
            return response
        refused = api_call_allowed(raw.strip())
        if refused is not None:
            return refused
        request.user, request.caller = caller.user, caller
        try:
            return view(request, *args, **kwargs)
        except Http404 as error:
            return _error(404, str(error) or "not found")
        except PermissionDenied as error:
            return _error(403, str(error) or "forbidden")

    return wrapper


def _annotator_project(caller: Caller) -> Project:
    """The project the URL names, if the caller may annotate it (what access.project_for_annotator
    means: members and staff pass; anyone else gets a 404, so slugs don't leak)."""
    if not caller.may_annotate():
        raise Http404("No such project.")
    return caller.project


def _json_body(request: HttpRequest, *, limit: int | None = None):
    """The body as JSON. With ``limit`` (an import's IMPORT_MAX_BYTES) it is read from the stream up to
    that many bytes, instead of Django's in-memory limit for every request body."""
    if limit is None:
        raw = request.body
    else:
        raw = request.read(limit + 1)
        if len(raw) > limit:
            raise _TooBig(f"the request body is over {limit:,} bytes (IMPORT_MAX_BYTES); nothing was imported: "
                          "send the rows in several requests")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("the request body is not valid JSON") from None
    except RecursionError:
        raise _BadRequest("the request body is nested too deeply") from None


class _BadRequest(Exception):
    pass


class _TooBig(Exception):
    pass


@require_GET
@api_view
def projects(request: HttpRequest) -> JsonResponse:
    rows = list(access.projects_of(request.user))
    counts = selectors.project_counts([p.pk for p in rows])
    return JsonResponse(
        {
            "projects": [
                {"slug": p.slug, "name": p.name, "role": p.my_role, **counts[p.pk]}
                for p in rows
            ]
        }
    )


def _comparison_json(comparison) -> dict:
    # The queue read the prompt and both texts with the comparison (see annotate.queue).
    return {
        "id": comparison.pk,
        "prompt": comparison.prompt_messages,
        "a": {"id": comparison.completion_a_id, "text": comparison.text_a},
        "b": {"id": comparison.completion_b_id, "text": comparison.text_b},
    }


@require_GET
@api_view(scope="project")
def comparison_next_view(request: HttpRequest, slug: str) -> HttpResponse:
    caller = request.caller
    project = _annotator_project(caller)
    comparison = comparison_next(project=project, annotator=caller.user, holds_lease=caller.holds_lease)
    if comparison is None:
        return HttpResponse(status=204)
    return JsonResponse(_comparison_json(comparison))


def _wants_next(request: HttpRequest, body: dict) -> bool:
    flag = request.GET.get("next", "")
    return body.get("next") is True or flag.lower() in {"1", "true", "yes"}


@require_POST
@api_view(scope="comparison")
def vote(request: HttpRequest, comparison_id: int) -> JsonResponse:
    """Record a vote; with ``"next": true`` in the body (or ``?next=1``) the answer also carries
    the next comparison of the project (``"next": null`` when nothing is left), so an annotation
    client needs one request per pair instead of two."""
    caller = request.caller
    if not caller.comparison_exists:
        raise Http404(f"comparison {comparison_id} does not exist")
    project = _annotator_project(caller)
    try:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest('the body must be a JSON object like {"choice": "a"}')
        outcome = vote_record(
            annotator=caller.user,
            comparison_id=comparison_id,
            choice=body.get("choice", ""),
            strength=body.get("strength"),
            rationale="" if body.get("rationale") is None else body["rationale"],
            time_spent_ms=body.get("time_spent_ms"),
            idempotency_key="" if body.get("idempotency_key") is None else body["idempotency_key"],
        )
    except _BadRequest as error:
        return _error(400, str(error))
    except VoteError as error:
        return _error(error.status, str(error))
    vote = outcome.vote
    payload = {
        "id": vote.pk,
        "comparison": vote.comparison_id,
        "choice": vote.choice,
        "winner": vote.winner_id,
        "strength": vote.strength,
        "created": outcome.created,
    }
    if _wants_next(request, body):
        # After the vote's own transaction (and its retrain check) has committed. The lease the
        # vote released does not count; one held on another pair is handed out again.
        following = comparison_next(project=project, annotator=caller.user, holds_lease=caller.holds_lease)
        payload["next"] = None if following is None else _comparison_json(following)
    return JsonResponse(payload, status=201 if outcome.created else 200)


def _rows_import(request: HttpRequest, slug: str, importer) -> JsonResponse:
    project = access.project_for_manager(request.user, slug)
    try:
        body = _json_body(request, limit=settings.IMPORT_MAX_BYTES)
    except _BadRequest as error:
        return _error(400, str(error))
    except _TooBig as error:
        return _error(413, str(error))
    rows = body.get("items") if isinstance(body, dict) else body
    if not isinstance(rows, list):
        return _error(400, 'send a JSON list of rows, or {"items": [...]}')
    try:
        result = importer(project=project, rows=rows)
    except imports.InvalidInput as error:
        return _error(400, f"nothing was imported: {error}")
    return JsonResponse(result.as_dict(), status=201)


@require_POST
@api_view
def prompts_import(request: HttpRequest, slug: str) -> JsonResponse:
    return _rows_import(request, slug, imports.import_prompt_rows)


@require_POST
@api_view
def completions_import(request: HttpRequest, slug: str) -> JsonResponse:
    return _rows_import(request, slug, imports.import_completion_rows)


@require_GET
@api_view
def export(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    try:  # the same parameters as the manager's export page (views_manage.export_params)
        return export_response(project, request.GET)
    except InvalidInput as error:
        return _error(400, f"nothing was exported: {error}")
