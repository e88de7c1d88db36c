"""A WSGI handler for the JSON API with its own, shorter middleware list."""
from __future__ import annotations

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.utils.module_loading import import_string

from annotate.api_problems import problem


def _as_problem(request, response):
    status = response.status_code
    code = {400: "invalid_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            413: "payload_too_large"}.get(status, "internal_error" if status >= 500 else "invalid_request")
    detail = response.reason_phrase if status < 500 else "the server failed to answer; the error was logged"
    refused = problem(request, code, detail, status=status)
    for name, value in response.items():  # Allow, Retry-After, the security middleware's headers
        if name.lower() not in ("content-type", "content-length"):
            refused[name] = value
    return refused


class ApiWSGIHandler(WSGIHandler):
    """Django's WSGI handler with ``settings.API_MIDDLEWARE`` instead of ``settings.MIDDLEWARE``.

    The list may hold only plain request/response middleware (no ``process_view``,
    ``process_exception`` or ``process_template_response`` hooks), which is what the API
    needs: the routes authenticate, answer JSON and turn their own errors into problems
    (``config.api``); an error answered before any route ran becomes one here.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        handler = convert_exception_to_response(self._get_response)
        for path in reversed(settings.API_MIDDLEWARE):
            middleware = import_string(path)(handler)
            hooks = ("process_view", "process_exception", "process_template_response")
            if any(hasattr(middleware, hook) for hook in hooks):
                raise ValueError(f"{path} has view, exception or template hooks; API_MIDDLEWARE takes plain ones")
            handler = convert_exception_to_response(middleware)
        self._middleware_chain = handler

    def get_response(self, request):
        response = super().get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith("application/"):
            # Refused before any route ran (a bad Host header, a middleware's refusal, an error
            # Django turned into its HTML page): answer in the API's one shape all the same.
            response = _as_problem(request, response)
        # What CommonMiddleware does for the site: a known length keeps the connection alive
        # without chunked encoding.
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        return response
