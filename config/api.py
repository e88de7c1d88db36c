"""The JSON API under /api/: one django-ninja API from the apps' routers, its errors and its document.

Every answer under /api/ that is an error is a problem (``annotate.api_problems``): the routes'
refusals, an unknown path (404), a method a path does not take (405, with ``Allow``), a body that is
not JSON (400), too big (413), a token over its rate (429, ``Retry-After``), the database out of
reach (503, ``Retry-After``) and anything unforeseen (500, logged). ``/api/openapi.json`` is
generated from the routes (why django-ninja: ``annotate.api``'s docstring).
"""
from __future__ import annotations

import logging
from functools import cache, wraps

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import URLPattern, path, re_path
from django.views.decorators.http import require_GET
from ninja import NinjaAPI, Router
from ninja.errors import AuthenticationError, HttpError, ValidationError

from annotate import api as annotate_api
from annotate.api_common import BODY_SCHEMAS, query_doc, too_big_message
from annotate.api_problems import CODES, TITLES, ApiError, problem, problems
from annotate.views_events import events_api
from training import api as training_api

log = logging.getLogger(__name__)

DESCRIPTION = """Collect pairwise preferences, export them for TRL, OpenRLHF and datasets, and follow training.
Authenticate with `Authorization: Bearer <token>` (`python manage.py create_api_token USER`).

Errors are RFC 9457 problem details with a stable `code` (and `error`, the same text as `detail`):
""" + ", ".join(f"`{code}` ({status})" for code, (status, _) in CODES.items()) + """.
Lists page with `limit` (at most 200) and `offset`, and answer `count` and `next`."""

api = NinjaAPI(title="Flywheel API", version="1", description=DESCRIPTION, openapi_url=None, docs_url=None,
               urls_namespace="api")
# The event stream is a plain Django view (annotate.views_events: it streams, and the page's twin shares
# it) that authenticates with annotate.api.api_view; this route mounts and documents it.
events = Router(tags=["annotation"])
_EVENTS = {
    "security": [{"Bearer": []}],
    "parameters": [{"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer"}},
                   query_doc("after", {"type": "integer"}, "the id of the last event seen (or Last-Event-ID)")],
    "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {}}}},
}


@events.get("/projects/{slug:slug}/events", url_name="api-events", response={200: None, **problems(401, 404)},
            summary="The project's events as server-sent events (members)", openapi_extra=_EVENTS)
def project_events(request: HttpRequest, slug: str):
    """Stored events (snapshot.frozen, run.state_changed, checkpoint.published, checkpoint.promoted, and
    vote.recorded while a webhook wants it), each with its id, plus votes.progress counts. The response
    ends after EVENTS_STREAM_SECONDS; reconnect with Last-Event-ID (or ?after=ID) to go on where it stopped."""
    return events_api(request, slug=slug)


api.add_router("/", annotate_api.router)
api.add_router("/", events)
api.add_router("/", training_api.router)


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, error: ApiError):
    return problem(request, error.code, error.detail, status=error.status, headers=error.headers)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, error: AuthenticationError):
    return annotate_api.unauthenticated(request)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, error: Http404):
    return problem(request, "not_found", str(error) or "not found")


@api.exception_handler(PermissionDenied)
def _forbidden(request: HttpRequest, error: PermissionDenied):
    return problem(request, "forbidden", str(error) or "forbidden")


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, error: ValidationError):
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in error.errors)
    return problem(request, "invalid_parameters", where)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, error: HttpError):
    code = next((c for c, (status, _) in CODES.items() if status == error.status_code), "invalid_request")
    return problem(request, code, str(error), status=error.status_code)


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, error: RequestDataTooBig):
    return problem(request, "payload_too_large", too_big_message())


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database(request: HttpRequest, error: Exception):  # the database restarts, or is out of reach
    return annotate_api.database_unavailable(request)


@api.exception_handler(Exception)
def _unforeseen(request: HttpRequest, error: Exception):
    log.error("API %s %s failed", request.method, request.path, exc_info=error)
    # As Django does for an uncaught exception: the test client re-raises it, error reporters see it.
    got_request_exception.send(sender=None, request=request)
    return problem(request, "internal_error", "the server failed to answer; the error was logged")


@cache
def document() -> dict:
    """The OpenAPI document, generated once per process: every route with its parameters, bodies,
    answers and problems; 401/429 on every authenticated operation and 503 on every one."""
    schema = api.get_openapi_schema(path_prefix="/api/")
    schema["servers"] = [{"url": "/"}]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, described in BODY_SCHEMAS.items():
        components.setdefault(name, described)
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for operations in schema["paths"].values():
        for operation in operations.values():
            # Ninja keys its answers by int, openapi_extra by str: merge them (the extra's fields win).
            answers = {str(status): answer for status, answer in operation["responses"].items()
                       if isinstance(status, int)}
            for status, answer in operation["responses"].items():
                if isinstance(status, str):
                    answers[status] = {**answers.get(status, {}), **answer}
            if operation.get("security"):
                answers.setdefault("401", {"description": "no valid bearer token"})
                answers.setdefault("429", {"description": "the token made too many calls this minute "
                                                          "(API_REQUESTS_PER_MINUTE); see Retry-After"})
            answers.setdefault("503", {"description": "the database is out of reach; nothing was stored; "
                                                      "see Retry-After"})
            for status, answer in answers.items():
                if int(status) >= 400:
                    answer["description"] = answer.get("description") or TITLES.get(int(status), "error")
                    answer["content"] = {media: {"schema": problem_ref}
                                         for media in ("application/json", "application/problem+json")}
            operation["responses"] = dict(sorted(answers.items()))
    return schema


@require_GET
def openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(document())


def _json_405(view):
    """Ninja answers a method a path does not take with an HTML 405; make it a problem."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        response = view(request, *args, **kwargs)
        if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/"):
            allowed = response["Allow"]
            return problem(request, "method_not_allowed", f"{request.method} is not allowed here; use {allowed}",
                           headers={"Allow": allowed})
        return response

    return wrapper


def unknown(request: HttpRequest, rest: str = ""):
    return problem(request, "not_found", f"no API route {request.path}; see /api/openapi.json")


def urls() -> list[URLPattern]:
    """``config.urls``' patterns under /api/: the document, every route, then a JSON 404 for the rest."""
    routes = [URLPattern(p.pattern, _json_405(p.callback), p.default_args, p.name)
              for p in api._get_urls() if p.name != "api-root"]  # no ninja home page: /api/ is a 404 here
    return [path("openapi.json", _json_405(openapi), name="api-openapi"), *routes,
            re_path(r"^(?P<rest>.*)$", unknown, name="api-unknown")]
