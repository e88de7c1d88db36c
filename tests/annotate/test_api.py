from __future__ import annotations

import json

import pytest
from django.urls import reverse

from annotate.models import Vote
from annotate.tokens import token_create


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
    changed = api("post", url, {"choice": "b", "idempotency_key": "abc"})
    assert changed.status_code == 409 and "you already voted 'a'" in changed.json()["error"]
    assert "'b' was not recorded" in changed.json()["error"]
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


def test_vote_with_next_returns_the_vote_and_the_next_comparison(api, project, comparisons):
    first = api("get", "/api/projects/demo/comparisons/next").json()
    response = api("post", f"/api/comparisons/{first['id']}/vote", {"choice": "a", "next": True})
    assert response.status_code == 201
    body = response.json()
    assert body["comparison"] == first["id"] and body["created"] is True
    following = body["next"]
    assert set(following) == {"id", "prompt", "a", "b"} and following["id"] != first["id"]
    # The next comparison is reserved: asking again hands out the same one.
    assert api("get", "/api/projects/demo/comparisons/next").json() == following
    assert Vote.objects.count() == 1


def test_vote_with_next_as_a_query_flag(api, project, comparisons):
    pair = api("get", "/api/projects/demo/comparisons/next").json()
    response = api("post", f"/api/comparisons/{pair['id']}/vote?next=1", {"choice": "tie"})
    assert response.status_code == 201 and response.json()["next"]["id"] != pair["id"]
    plain = api("post", f"/api/comparisons/{response.json()['next']['id']}/vote", {"choice": "tie"})
    assert plain.status_code == 201 and "next" not in plain.json()


def test_replayed_vote_with_next_is_200_with_the_same_next_and_one_vote(api, project, comparisons):
    pair = api("get", "/api/projects/demo/comparisons/next").json()
    url = f"/api/comparisons/{pair['id']}/vote"
    first = api("post", url, {"choice": "b", "idempotency_key": "k1", "next": True})
    replay = api("post", url, {"choice": "b", "idempotency_key": "k1", "next": True})
    assert first.status_code == 201 and replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"] and replay.json()["created"] is False
    # A client that lost the first answer gets the same next pair, not a second slot.
    assert replay.json()["next"] == first.json()["next"]
    assert Vote.objects.count() == 1


def test_vote_with_next_walks_the_whole_queue_and_ends_with_null(api, project, comparisons):
    pair = api("get", "/api/projects/demo/comparisons/next").json()
    seen = []
    while pair is not None:
        seen.append(pair["id"])
        response = api("post", f"/api/comparisons/{pair['id']}/vote", {"choice": "a", "next": True})
        assert response.status_code == 201
        pair = response.json()["next"]
    assert sorted(seen) == sorted(c.pk for c in comparisons)
    assert Vote.objects.count() == len(comparisons)
    assert api("get", "/api/projects/demo/comparisons/next").status_code == 204


def test_vote_with_next_is_refused_to_outsiders(client, outsider, comparisons):
    token = token_create(user=outsider)
    response = client.post(
        f"/api/comparisons/{comparisons[0].pk}/vote", data=json.dumps({"choice": "a", "next": True}),
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 404 and "next" not in response.json()
    assert not Vote.objects.exists()


def test_a_database_out_of_reach_is_a_json_503_that_stores_nothing(api, project, comparisons, monkeypatch):
    from django.db import OperationalError

    from annotate import api_common

    def refused(*args, **kwargs):
        raise OperationalError("could not connect to server: Connection refused (password=hunter2)")

    monkeypatch.setattr(api_common, "caller_for_token", refused)
    response = api("post", f"/api/comparisons/{comparisons[0].pk}/vote", {"choice": "a"})
    assert response.status_code == 503 and response["Content-Type"] == "application/json"
    assert response["Retry-After"] == "1" and "database is unreachable" in response.json()["error"]
    assert "hunter2" not in response.content.decode() and Vote.objects.count() == 0


def test_request_bodies_over_their_limits_are_a_json_413_naming_the_limit(client, manager, annotator, project,
                                                                          comparisons, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    settings.IMPORT_MAX_BYTES = 60_000
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager, name='t')}"}
    rows = [{"prompt": f"Prompt number {i} " + "x" * 40} for i in range(600)]
    body = json.dumps(rows)
    assert 2_000 < len(body) < 60_000  # over the in-memory limit, under the import limit
    imported = client.post("/api/projects/demo/prompts", body, content_type="application/json", **headers)
    assert imported.status_code == 201, imported.content
    huge = json.dumps(rows * 3)
    refused = client.post("/api/projects/demo/prompts", huge, content_type="application/json", **headers)
    assert refused.status_code == 413 and "60,000 bytes (IMPORT_MAX_BYTES)" in refused.json()["error"]
    annotating = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator, name='a')}"}
    vote = client.post(f"/api/comparisons/{comparisons[0].pk}/vote", json.dumps({"choice": "a", "rationale": "y" * 3_000}),
                       content_type="application/json", **annotating)
    assert vote.status_code == 413 and "over 2,000 bytes (UPLOAD_MAX_MEMORY_BYTES)" in vote.json()["error"]
    assert not Vote.objects.exists()
