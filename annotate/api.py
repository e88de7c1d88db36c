"""The JSON API: bearer-token auth, thin views over the same services as the web pages.

Described by ``annotate.openapi.SPEC`` at ``/api/openapi.json``.
"""
from __future__ import annotations

import json
from functools import wraps

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from annotate import access, imports, selectors
from annotate.models import Project
from annotate.queue import comparison_next
from annotate.tokens import user_for_token
from annotate.views_manage import export_response
from annotate.votes import VoteError, vote_record


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def api_view(view):
    """Authenticate by ``Authorization: Bearer <token>`` and turn access errors into JSON."""

    @csrf_exempt  # Bearer tokens are not sent by browsers on their own, so CSRF does not apply.
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, raw = header.partition(" ")
        user = user_for_token(raw.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            response = _error(401, "a valid bearer token is required (python manage.py create_api_token USER)")
            response["WWW-Authenticate"] = "Bearer"
            return response
        request.user = user
        try:
            return view(request, *args, **kwargs)
        except Http404 as error:
            return _error(404, str(error) or "not found")
        except PermissionDenied as error:
            return _error(403, str(error) or "forbidden")

    return wrapper


# The two calls of every annotation check access in one query each, written out in SQL
# because the ORM spent more CPU building them than the database spent answering. They
# mean what access.project_for_annotator means: members and staff pass; anyone else
# gets a 404, so slugs don't leak.
_PROJECT_WITH_ROLE = """
    SELECT p.*, m.role AS my_role FROM annotate_project p
    LEFT JOIN annotate_membership m ON m.project_id = p.id AND m.user_id = %s
    WHERE p.slug = %s
"""
_COMPARISON_WITH_ROLE = """
    SELECT c.id, m.role FROM annotate_comparison c
    LEFT JOIN annotate_membership m ON m.project_id = c.project_id AND m.user_id = %s
    WHERE c.id = %s
"""


def _project_for_annotator(user, slug: str) -> Project:
    project = next(iter(Project.objects.raw(_PROJECT_WITH_ROLE, (user.pk, slug))), None)
    if project is None or not (user.is_staff or project.my_role):
        raise Http404("No such project.")
    return project


def _may_vote_on(user, comparison_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_COMPARISON_WITH_ROLE, [user.pk, comparison_id])
        row = cursor.fetchone()
    if row is None:
        raise Http404(f"comparison {comparison_id} does not exist")
    if not (user.is_staff or row[1]):
        raise Http404("No such project.")


def _json_body(request: HttpRequest):
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("the request body is not valid JSON") from None


class _BadRequest(Exception):
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


@require_GET
@api_view
def comparison_next_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project_for_annotator(request.user, slug)
    comparison = comparison_next(project=project, annotator=request.user)
    if comparison is None:
        return HttpResponse(status=204)
    messages = comparison.prompt_messages  # read with the comparison, as JSON text on some backends
    return JsonResponse(
        {
            "id": comparison.pk,
            "prompt": json.loads(messages) if isinstance(messages, str) else messages,
            "a": {"id": comparison.completion_a_id, "text": comparison.text_a},
            "b": {"id": comparison.completion_b_id, "text": comparison.text_b},
        }
    )


@require_POST
@api_view
def vote(request: HttpRequest, comparison_id: int) -> JsonResponse:
    _may_vote_on(request.user, comparison_id)
    try:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest('the body must be a JSON object like {"choice": "a"}')
        outcome = vote_record(
            annotator=request.user,
            comparison_id=comparison_id,
            choice=body.get("choice", ""),
            strength=body.get("strength"),
            rationale=str(body.get("rationale") or ""),
            time_spent_ms=body.get("time_spent_ms") if isinstance(body.get("time_spent_ms"), int) else None,
            idempotency_key=str(body.get("idempotency_key") or ""),
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
    return JsonResponse(payload, status=201 if outcome.created else 200)


def _rows_import(request: HttpRequest, slug: str, importer) -> JsonResponse:
    project = access.project_for_manager(request.user, slug)
    try:
        body = _json_body(request)
    except _BadRequest as error:
        return _error(400, str(error))
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
    return export_response(project, request.GET.get("format", "trl"))
