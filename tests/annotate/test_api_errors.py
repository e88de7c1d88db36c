"""Every error under /api/ is one JSON shape: RFC 9457 problem details with a stable code, plus "error"."""
from __future__ import annotations

import json

import pytest

from annotate.models import Vote
from annotate.tokens import token_create
from tests.annotate.test_api_handler import wsgi  # noqa: F401  (the production handler, as a fixture)


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["type"].endswith(":" + code)
    assert body["title"] and body["detail"] and body["error"] == body["detail"]
    return body


@pytest.fixture
def auth(annotator):
    return {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}


@pytest.fixture
def managing(manager):
    return {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager)}"}


@pytest.mark.parametrize("path", ["/api/", "/api/nope", "/api/projects/demo/comparisons/next/",
                                  "/api/comparisons/abc/vote", "/api/runs/1/retry"])
def test_an_unknown_api_path_is_a_json_404(client, db, path):
    body = assert_problem(client.get(path), 404, "not_found")
    assert "/api/openapi.json" in body["detail"]


def test_a_method_a_route_does_not_take_is_a_json_405_with_allow(client, project, comparisons, auth):
    response = client.get(f"/api/comparisons/{comparisons[0].pk}/vote", **auth)
    assert_problem(response, 405, "method_not_allowed")
    assert response["Allow"] == "POST"
    response = client.delete("/api/projects/demo/runs", **auth)
    assert_problem(response, 405, "method_not_allowed")
    assert set(response["Allow"].split(", ")) == {"GET", "POST"}
    assert_problem(client.post("/api/openapi.json"), 405, "method_not_allowed")


def test_a_body_that_is_not_json_is_a_400(client, project, comparisons, auth):
    response = client.post(f"/api/comparisons/{comparisons[0].pk}/vote", b"{nope", content_type="application/json",
                           **auth)
    assert assert_problem(response, 400, "invalid_json")["error"] == "the request body is not valid JSON"
    assert not Vote.objects.exists()


def test_a_bad_vote_a_full_pair_and_a_used_key_have_their_codes(client, project, comparisons, auth):
    url = f"/api/comparisons/{comparisons[0].pk}/vote"
    assert_problem(client.post(url, {"choice": "x"}, content_type="application/json", **auth), 400, "invalid_vote")
    client.post(url, {"choice": "a", "idempotency_key": "k"}, content_type="application/json", **auth)
    other = f"/api/comparisons/{comparisons[1].pk}/vote"
    assert_problem(client.post(other, {"choice": "b", "idempotency_key": "k"}, content_type="application/json",
                               **auth), 409, "idempotency_conflict")


def test_no_token_or_a_bad_one_is_a_401_asking_for_a_bearer(client, db):
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer fw_not-a-token"}, {"HTTP_AUTHORIZATION": "Basic eDp5"}):
        response = client.get("/api/projects", **headers)
        assert_problem(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"] == "Bearer"


def test_an_annotator_at_a_managers_route_is_a_403_and_a_stranger_a_404(client, project, auth, outsider):
    assert_problem(client.get("/api/projects/demo/export", **auth), 403, "forbidden")
    strange = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=outsider)}"}
    assert_problem(client.get("/api/projects/demo/export", **strange), 404, "not_found")
    assert_problem(client.get("/api/projects/demo/comparisons/next", **strange), 404, "not_found")


def test_a_bad_export_format_is_a_json_400_naming_it(client, project, managing):
    body = assert_problem(client.get("/api/projects/demo/export?format=csv", **managing), 400, "invalid_parameters")
    assert "format must be one of" in body["error"]


def test_a_body_over_the_limit_is_a_json_413(client, project, comparisons, auth, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    response = client.post(f"/api/comparisons/{comparisons[0].pk}/vote",
                           json.dumps({"choice": "a", "rationale": "y" * 2_000}), content_type="application/json",
                           **auth)
    assert "UPLOAD_MAX_MEMORY_BYTES" in assert_problem(response, 413, "payload_too_large")["error"]
    assert not Vote.objects.exists()


def test_a_bad_page_parameter_is_a_400_naming_it(client, project, auth):
    body = assert_problem(client.get("/api/projects?limit=5000", **auth), 400, "invalid_parameters")
    assert "limit" in body["error"]
    assert_problem(client.get("/api/projects?offset=-1", **auth), 400, "invalid_parameters")


def test_throttled_calls_are_a_429_problem_with_retry_after(client, project, auth, settings):
    settings.API_REQUESTS_PER_MINUTE = 1
    assert client.get("/api/projects", **auth).status_code == 200
    response = client.get("/api/projects", **auth)
    assert_problem(response, 429, "throttled")
    assert 0 < int(response["Retry-After"]) <= 60


def test_an_unforeseen_failure_is_a_logged_json_500(client, project, auth, monkeypatch, caplog):
    from annotate import selectors

    def broken(ids):
        raise RuntimeError("a bug")

    monkeypatch.setattr(selectors, "project_counts", broken)
    client.raise_request_exception = False
    body = assert_problem(client.get("/api/projects", **auth), 500, "internal_error")
    assert "a bug" not in body["detail"] and "a bug" in caplog.text


def test_a_client_that_accepts_problem_json_gets_that_media_type(client, db):
    response = client.get("/api/projects", HTTP_ACCEPT="application/problem+json, application/json")
    assert response.status_code == 401 and response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "not_authenticated"


def test_the_production_handler_answers_problems_too(wsgi, project, comparisons, annotator):  # noqa: F811
    status, headers, body = wsgi("GET", "/api/no/such/route")
    assert status == 404 and json.loads(body)["code"] == "not_found"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    status, headers, body = wsgi("GET", f"/api/comparisons/{comparisons[0].pk}/vote", **auth)
    assert status == 405 and headers["Allow"] == "POST" and json.loads(body)["code"] == "method_not_allowed"


class RefusingMiddleware:
    """Answers before any route runs, with an HTML page, as a middleware or Django itself may."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from django.http import HttpResponseBadRequest

        return HttpResponseBadRequest("<h1>Bad Request (400)</h1>")


def test_an_html_refusal_before_any_route_becomes_a_problem(wsgi, settings, db):  # noqa: F811
    from config import wsgi as entry
    from config.handlers import ApiWSGIHandler

    settings.API_MIDDLEWARE = [*settings.API_MIDDLEWARE, f"{__name__}.RefusingMiddleware"]
    refusing = ApiWSGIHandler()
    original, entry.api = entry.api, refusing
    try:
        status, headers, body = wsgi("GET", "/api/projects")
    finally:
        entry.api = original
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["code"] == "invalid_request" and json.loads(body)["error"] == "Bad Request"
    assert headers["X-Content-Type-Options"] == "nosniff"
