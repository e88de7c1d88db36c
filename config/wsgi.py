"""WSGI entry point for gunicorn: ``gunicorn config.wsgi``.

Requests under ``/api/`` go through a handler with only ``settings.API_MIDDLEWARE``:
API calls authenticate with a bearer token (``annotate.api.api_view``), so sessions,
CSRF, messages, auth-from-session and htmx do nothing for them but cost CPU on the
annotation hot path. Everything else (pages, forms, admin) keeps the full
``settings.MIDDLEWARE``, CSRF included.
"""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
site = get_wsgi_application()

from config.handlers import ApiWSGIHandler  # noqa: E402  (needs the settings set up above)

api = ApiWSGIHandler()


def application(environ, start_response):
    handler = api if environ.get("PATH_INFO", "").startswith("/api/") else site
    return handler(environ, start_response)
