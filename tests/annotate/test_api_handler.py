"""The production WSGI entry point: /api/ runs with the short API middleware list, pages keep CSRF."""
from __future__ import annotations

import io
import json

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from annotate.models import Vote
from annotate.tokens import token_create


@pytest.fixture
def wsgi(db):
    """Call config.wsgi.application like a server would (keeping the test's database connection open,
    as Django's test client does)."""
    from config.wsgi import application

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)

    def call(method: str, path: str, body: bytes = b"", **headers) -> tuple[int, dict, bytes]:
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "testserver",
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": headers.pop("content_type", "application/json"), **headers,
        }
        started = {}

        def start_response(status, response_headers, exc_info=None):
            started.update(status=int(status.split()[0]), headers=dict(response_headers))

        data = b"".join(application(environ, start_response))
        return started["status"], started["headers"], data

    yield call
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_api_calls_work_through_the_production_handler(wsgi, annotator, project, comparisons):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    status, headers, body = wsgi("GET", "/api/projects/demo/comparisons/next", **auth)
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    assert int(headers["Content-Length"]) == len(body)
    pair = json.loads(body)
    vote = json.dumps({"choice": "a", "next": True}).encode()
    status, _, body = wsgi("POST", f"/api/comparisons/{pair['id']}/vote", vote, **auth)
    assert status == 201 and json.loads(body)["next"]["id"] != pair["id"]
    assert Vote.objects.filter(comparison_id=pair["id"], annotator=annotator).count() == 1
    assert wsgi("GET", "/api/projects")[0] == 401


def test_session_forms_still_need_the_csrf_token(wsgi, client, annotator, project, comparisons):
    client.force_login(annotator)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    status, _, _ = wsgi("POST", f"/p/demo/compare/{comparisons[0].pk}/vote/", b"choice=a",
                        content_type="application/x-www-form-urlencoded", HTTP_COOKIE=cookie)
    assert status == 403
    assert not Vote.objects.exists()
