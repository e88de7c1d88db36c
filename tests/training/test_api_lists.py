"""The training lists of the API: runs, checkpoints and the leaderboard, paged, with what the console shows."""
from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Checkpoint
from annotate.tokens import token_create
from tests.training.test_console_leaderboard import battles
from training.models import TrainingRun
from training.reward import reward_model_start
from training.runs import run_create


@pytest.fixture
def auth(manager):
    return {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager)}"}


def test_runs_are_listed_newest_first_filtered_by_kind_and_state(client, project, auth):
    made = [reward_model_start(project=project, enqueue=False) for _ in range(3)]
    generation = run_create(project=project, kind=TrainingRun.Kind.GENERATION, enqueue=False)
    TrainingRun.objects.filter(pk=made[0].pk).update(state=TrainingRun.State.FAILED)
    body = client.get("/api/projects/demo/runs?limit=3", **auth).json()
    assert [r["id"] for r in body["runs"]] == [generation.pk, made[2].pk, made[1].pk]
    assert body["count"] == 4 and body["next"] == "/api/projects/demo/runs?limit=3&offset=3"
    assert client.get(body["next"], **auth).json()["runs"][0]["id"] == made[0].pk
    only = client.get("/api/projects/demo/runs?kind=reward_model&state=failed", **auth).json()
    assert [r["id"] for r in only["runs"]] == [made[0].pk] and only["runs"][0]["state"] == "failed"
    # The same object as GET /api/runs/<id>.
    assert only["runs"][0] == client.get(f"/api/runs/{made[0].pk}", **auth).json()
    refused = client.get("/api/projects/demo/runs?kind=sft", **auth)
    assert refused.status_code == 400 and "kind" in refused.json()["error"]


def test_checkpoints_are_listed_with_their_lineage(client, project, auth):
    base = services.checkpoint_get_or_create(project=project, name="base", state=Checkpoint.State.INCUMBENT)
    child = services.checkpoint_get_or_create(project=project, name="child", parent=base)
    run = run_create(project=project, kind=TrainingRun.Kind.DPO, enqueue=False, checkpoint_in=base)
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint_out=child)
    body = client.get("/api/projects/demo/checkpoints", **auth).json()
    assert [(c["name"], c["parent"], c["run"], c["state"]) for c in body["checkpoints"]] == [
        ("child", "base", run.pk, "candidate"), ("base", None, None, "incumbent")]
    assert body["count"] == 2 and body["next"] is None


def test_the_leaderboard_ranks_checkpoints_by_human_battles(client, project, auth):
    base = services.checkpoint_get_or_create(project=project, name="base", state=Checkpoint.State.INCUMBENT)
    cand = services.checkpoint_get_or_create(project=project, name="cand", parent=base)
    services.checkpoint_get_or_create(project=project, name="unrated")
    battles(project, cand, base, ["a"] * 30 + ["b"] * 5)
    body = client.get("/api/projects/demo/leaderboard", **auth).json()
    assert body["incumbent"] == "base" and body["battles"] == 35 and body["count"] == 3
    top, second, unrated = body["leaderboard"]
    assert (top["rank"], top["checkpoint"], top["games"], top["wins"]) == (1, "cand", 35, 30)
    assert top["lower"] < top["score"] < top["upper"] and second["checkpoint"] == "base"
    assert (unrated["checkpoint"], unrated["rank"], unrated["score"], unrated["games"]) == ("unrated", None, None, 0)
    page = client.get("/api/projects/demo/leaderboard?limit=1&offset=1", **auth).json()
    assert [s["checkpoint"] for s in page["leaderboard"]] == ["base"] and page["count"] == 3
