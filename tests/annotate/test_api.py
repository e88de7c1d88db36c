from __future__ import annotations

import json

import pytest
from django.urls import reverse

from annotate.models import Vote
from annotate.tokens import token_create


def test_openapi_document_lists_every_api_route(client):
    from django.urls import get_resolver

    spec = client.get("/api/openapi.json").json()
    api_routes = {
        "/api/" + str(p.pattern).replace("<slug:slug>", "{slug}").replace("<int:comparison_id>", "{id}").replace("<int:run_id>", "{id}")
        for p in get_resolver().url_patterns[3].url_patterns
    }
    assert api_routes - {"/api/openapi.json"} == set(spec["paths"])


def test_openapi_document_covers_the_annotation_routes(client):
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {
        "/api/projects",
        "/api/projects/{slug}/comparisons/next",
        "/api/comparisons/{id}/vote",
        "/api/projects/{slug}/prompts",
        "/api/projects/{slug}/completions",
        "/api/projects/{slug}/export",
    }


def test_projects_lists_the_callers_projects_with_counts(api, project, comparisons):
    body = api("get", "/api/projects").json()
    assert body["projects"] == [
        {"slug": "demo", "name": "Demo", "role": "annotator", "prompts": 5, "comparisons": 5, "open": 5, "votes": 0}
    ]


def test_next_then_vote_then_replay(api, project, comparisons):
    pair = api("get", "/api/projects/demo/comparisons/next").json()
    assert set(pair) == {"id", "prompt", "a", "b"}
    assert pair["prompt"][0]["role"] == "user"
    url = f"/api/comparisons/{pair['id']}/vote"
    first = api("post", url, {"choice": "a", "strength": 3, "idempotency_key": "abc"})
    assert first.status_code == 201
    assert first.json()["winner"] == pair["a"]["id"]
    replay = api("post", url, {"choice": "a", "strength": 3, "idempotency_key": "abc"})
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert Vote.objects.count() == 1


def test_next_is_204_when_nothing_is_left(api, project):
    assert api("get", "/api/projects/demo/comparisons/next").status_code == 204


@pytest.mark.parametrize(
    "body,status",
    [({"choice": "x"}, 400), ([1, 2], 400), ({"choice": "a", "strength": "much"}, 400)],
)
def test_bad_votes_get_a_clear_error(api, project, comparisons, body, status):
    response = api("post", f"/api/comparisons/{comparisons[0].pk}/vote", body)
    assert response.status_code == status and response.json()["error"]


def test_bad_json_is_400(client, annotator, comparisons):
    token = token_create(user=annotator)
    response = client.post(
        f"/api/comparisons/{comparisons[0].pk}/vote", data=b"{nope", content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 400


def test_unknown_token_is_401(client, db):
    response = client.get("/api/projects", HTTP_AUTHORIZATION="Bearer fw_not-a-token")
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"


def test_create_api_token_command_prints_a_working_token(client, annotator):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_api_token", "annotator", stdout=out)
    token = out.getvalue().strip()
    assert client.get("/api/projects", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


def test_manager_adds_prompts_and_completions_by_api(client, manager, project):
    token = token_create(user=manager)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}", "content_type": "application/json"}
    r = client.post(reverse("api-prompts", args=["demo"]), data=json.dumps([{"prompt": "Hi?"}]), **auth)
    assert r.status_code == 201 and r.json()["created"] == 1
    rows = [
        {"prompt": "Hi?", "checkpoint": "m1", "text": "Hello!"},
        {"prompt": "Hi?", "checkpoint": "m2", "text": "Hey there."},
    ]
    r = client.post(reverse("api-completions", args=["demo"]), data=json.dumps(rows), **auth)
    assert r.status_code == 201 and r.json()["comparisons"] == 1
