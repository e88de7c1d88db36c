"""Every training API route (and the snapshots), for every kind of caller: annotators reach none of them,
as they reach none of the console's pages."""
from __future__ import annotations

import json

import pytest

from annotate.tokens import token_create
from training.reward import reward_model_start


@pytest.fixture
def run(project):
    return reward_model_start(project=project, enqueue=False)


def routes(run):
    """(method, url, body, the status a manager gets)."""
    return [
        ("post", "/api/projects/demo/reward-models/train", {"config": {}}, 202),
        ("get", "/api/projects/demo/reward-models", None, 200),
        ("post", "/api/projects/demo/runs", {"kind": "reward_model"}, 202),
        ("get", f"/api/runs/{run.pk}", None, 200),
        ("post", f"/api/runs/{run.pk}/cancel", None, 200),
        ("get", "/api/projects/demo/runs", None, 200),
        ("get", "/api/projects/demo/checkpoints", None, 200),
        ("get", "/api/projects/demo/snapshots", None, 200),
        ("get", "/api/projects/demo/leaderboard", None, 200),
    ]


def call(client, method, url, body, user=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=user)}"} if user else {}
    if method == "post":
        return client.post(url, data=json.dumps(body or {}), content_type="application/json", **headers)
    return client.get(url, **headers)


def test_training_api_by_role(client, project, manager, annotator, outsider, run):
    for method, url, body, allowed in routes(run):
        assert call(client, method, url, body).status_code == 401, url
        assert call(client, method, url, body, outsider).status_code == 404, url
        assert call(client, method, url, body, annotator).status_code == 403, url
        assert call(client, method, url, body, manager).status_code == allowed, url


def test_staff_reach_the_training_api_of_any_project(client, project, outsider, run):
    outsider.is_staff = True
    outsider.save()
    for method, url, body, allowed in routes(run):
        assert call(client, method, url, body, outsider).status_code == allowed, url
