"""The generated OpenAPI document: valid OpenAPI 3.1, every route under /api/ in it with its errors,
and real answers match the schemas it states (so it cannot drift from the code again)."""
from __future__ import annotations

import json
import re

import pytest
from django.urls import get_resolver
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from annotate.tokens import token_create


@pytest.fixture
def spec(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.json()


def _api_routes(client) -> set[tuple[str, str]]:
    """(path as the document writes it, method) for every route Django serves under /api/: the methods
    are what a 405 answer's Allow header names."""
    include = next(u for u in get_resolver().url_patterns if str(u.pattern) == "api/")
    routes = set()
    for pattern in include.url_patterns:
        if pattern.name in ("api-openapi", "api-unknown"):
            continue
        route = str(pattern.pattern)
        path = "/api/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        url = "/api/" + re.sub(r"<int:\w+>", "1", re.sub(r"<slug:\w+>", "demo", route))
        refused = client.generic("TRACE", url)
        assert refused.status_code == 405, url
        routes |= {(path, method.strip().lower()) for method in refused["Allow"].split(",")}
    return routes


def test_the_document_is_valid_openapi_3_1(client, spec):
    validate(spec)  # raises on any error
    assert spec["openapi"].startswith("3.1")

    def no_repeats(pairs):  # a key written twice (an int and a str status) would pass json.loads unseen
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), keys
        return dict(pairs)

    json.loads(client.get("/api/openapi.json").content, object_pairs_hook=no_repeats)


def test_every_api_route_and_method_is_in_the_document(client, spec):
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    routes = _api_routes(client)
    assert routes == documented
    assert {("/api/comparisons/{comparison_id}/skip", "post"), ("/api/projects/{slug}/runs", "get"),
            ("/api/projects/{slug}/checkpoints", "get"), ("/api/projects/{slug}/snapshots", "get"),
            ("/api/projects/{slug}/leaderboard", "get"), ("/api/projects/{slug}/events", "get")} <= routes


def test_every_operation_lists_its_errors_as_problems(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            answers = operation["responses"]
            assert "401" in answers and "503" in answers, (path, method)
            assert operation.get("security") == [{"Bearer": []}], (path, method)
            for status, answer in answers.items():
                if int(status) >= 400:
                    for media in ("application/json", "application/problem+json"):
                        assert answer["content"][media]["schema"] == {"$ref": "#/components/schemas/Problem"}
            if any(p["name"] == "limit" for p in operation.get("parameters", [])):
                assert "400" in answers, (path, method)  # a bad page parameter is a 400
    paths = spec["paths"]
    assert {"400", "401", "404", "409", "413", "429"} <= set(paths["/api/comparisons/{comparison_id}/vote"]["post"]
                                                             ["responses"])
    assert {"400", "401", "403", "404"} <= set(paths["/api/projects/{slug}/export"]["get"]["responses"])
    for path in ("/api/projects/{slug}/runs", "/api/projects/{slug}/checkpoints", "/api/projects/{slug}/leaderboard"):
        assert {"400", "401", "403", "404"} <= set(paths[path]["get"]["responses"]), path
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code", "error"}


def test_the_document_describes_bodies_and_the_next_flag(spec):
    vote = spec["paths"]["/api/comparisons/{comparison_id}/vote"]["post"]
    assert any(p["name"] == "next" and p["in"] == "query" for p in vote["parameters"])
    body = vote["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/VoteIn"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["VoteIn"]["properties"]) >= {"choice", "strength", "idempotency_key", "next"}
    assert "next" in schemas["Vote"]["properties"]
    export = spec["paths"]["/api/projects/{slug}/export"]["get"]
    assert {p["name"] for p in export["parameters"]} >= {"slug", "format", "output", "sources", "after"}
    runs = spec["paths"]["/api/projects/{slug}/runs"]
    assert {p["name"] for p in runs["get"]["parameters"]} >= {"limit", "offset", "kind", "state"}
    assert runs["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunStartIn"}


def _validator(spec, path: str, method: str, status: int) -> Draft202012Validator:
    registry = Registry().with_resource("urn:api", Resource.from_contents(spec, default_specification=DRAFT202012))
    answer = spec["paths"][path][method]["responses"][str(status)]
    schema = answer["content"]["application/json"]["schema"]
    return Draft202012Validator({"$ref": "urn:api" + schema["$ref"]}, registry=registry)


def test_real_answers_match_the_document(client, spec, project, comparisons, manager, annotator):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    pair = client.get("/api/projects/demo/comparisons/next", **headers)
    _validator(spec, "/api/projects/{slug}/comparisons/next", "get", 200).validate(pair.json())
    voted = client.post(f"/api/comparisons/{pair.json()['id']}/vote", {"choice": "a", "next": True},
                        content_type="application/json", **headers)
    assert voted.status_code == 201 and voted.json()["next"] is not None
    _validator(spec, "/api/comparisons/{comparison_id}/vote", "post", 201).validate(voted.json())
    skipped = client.post(f"/api/comparisons/{voted.json()['next']['id']}/skip?next=1", **headers)
    _validator(spec, "/api/comparisons/{comparison_id}/skip", "post", 200).validate(skipped.json())
    listed = client.get("/api/projects?limit=1", **headers)
    _validator(spec, "/api/projects", "get", 200).validate(listed.json())
    refused = client.get("/api/projects/demo/export", **headers)
    assert refused.status_code == 403
    _validator(spec, "/api/projects/{slug}/export", "get", 403).validate(refused.json())
    managing = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager)}"}
    started = client.post("/api/projects/demo/runs", {"kind": "reward_model"}, content_type="application/json",
                          **managing)
    _validator(spec, "/api/projects/{slug}/runs", "post", 202).validate(started.json())
    _validator(spec, "/api/projects/{slug}/runs", "get", 200).validate(client.get("/api/projects/demo/runs",
                                                                                  **managing).json())


def test_the_vote_body_s_bounds_and_replay_answers_are_the_ones_the_code_keeps(spec, client, annotator, comparisons):
    from annotate.votes import TIME_SPENT_MAX_MS

    vote_in = spec["components"]["schemas"]["VoteIn"]["properties"]
    spent = next(option for option in vote_in["time_spent_ms"].get("anyOf", [vote_in["time_spent_ms"]])
                 if option.get("type") == "integer")
    assert (spent["minimum"], spent["maximum"]) == (0, TIME_SPENT_MAX_MS)
    described = vote_in["idempotency_key"]["description"]
    assert "answers 200 with the first vote" in described and "different choice" in described and "409" in described
    # What the description says, as the code does it.
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    url = f"/api/comparisons/{comparisons[0].pk}/vote"

    def send(body):
        return client.post(url, json.dumps(body), content_type="application/json", **auth)

    assert send({"choice": "a", "idempotency_key": "k1"}).status_code == 201
    assert send({"choice": "a", "idempotency_key": "k1"}).status_code == 200
    assert send({"choice": "b", "idempotency_key": "k1"}).status_code == 409
    over = send({"choice": "a", "time_spent_ms": TIME_SPENT_MAX_MS + 1})
    assert over.status_code == 400 and "time_spent_ms" in over.json()["error"]
