"""The training side of the JSON API: runs, reward models, checkpoints and the leaderboard (managers
only, as the console's pages are); the same bearer tokens and error shape as ``annotate.api``."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from pydantic import Field

from annotate import access
from annotate.api_common import BEARER, PageIn, PageOut, body_doc, json_body, page
from annotate.api_problems import ApiError, problems
from annotate.boundary import unstorable
from annotate.models import Checkpoint
from rewardmodel.models import RewardModel
from training import checkpoints
from training.models import TrainingRun
from training.runs import run_cancel
from training.starts import inputs_by_name, run_start

router = Router(tags=["training"], auth=BEARER)
_MANAGERS = problems(403, 404)


class Run(Schema):
    id: int
    project: str
    kind: str
    state: str
    reason: str
    progress: float
    step: int
    total_steps: int
    config: dict
    error: str
    worker: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    outputs: dict
    reward_model: int | None = Field(description="the version this run published, if any")


class RunPage(PageOut):
    runs: list[Run]


class RunsIn(PageIn):
    kind: Literal[tuple(TrainingRun.Kind.values)] | None = None  # type: ignore[valid-type]
    state: Literal[tuple(TrainingRun.State.values)] | None = None  # type: ignore[valid-type]


class RunStartIn(Schema):
    kind: Literal[tuple(TrainingRun.Kind.values)]  # type: ignore[valid-type]
    config: dict = Field(default_factory=dict, description="settings; the rest are the defaults the console's "
                         "form shows")
    checkpoint: str | None = Field(None, description="dpo, ppo: default the incumbent; generation: default the "
                                   "newest candidate")
    rivals: list[str] | None = Field(None, description="generation: default the incumbent")
    snapshot: int | None = Field(None, description="dpo: default the latest reward model's snapshot")
    reward_model: int | None = Field(None, description="ppo: a version; default the latest")
    prompts: int | None = Field(None, description="generation: same as config.prompts (ignored otherwise)")


class RewardModelTrainIn(Schema):
    config: dict = Field(default_factory=dict)


class RewardModelOut(Schema):
    version: int
    backbone: str
    state: str
    votes: int
    pairs: int
    snapshot_sha256: str
    metrics: dict
    artifact_uri: str
    created_at: str


class RewardModelPage(PageOut):
    reward_models: list[RewardModelOut]


class CheckpointOut(Schema):
    id: int
    name: str
    state: str
    parent: str | None = Field(description="the parent checkpoint's name")
    uri: str
    endpoint_url: str
    endpoint_model: str
    meta: dict
    run: int | None = Field(description="the run that produced it")
    created_at: datetime


class CheckpointPage(PageOut):
    checkpoints: list[CheckpointOut]


class Standing(Schema):
    rank: int | None = Field(description="1 is best; null: no human battle votes yet")
    checkpoint: str
    checkpoint_id: int
    state: str
    score: float | None = Field(description="Bradley–Terry score")
    lower: float | None = Field(description="95% bootstrap interval")
    upper: float | None
    games: int
    wins: float = Field(description="ties and both-bad count half")
    run: int | None = Field(description="the run that produced the checkpoint")


class LeaderboardPage(PageOut):
    incumbent: str | None
    battles: int = Field(description="human battle votes counted")
    leaderboard: list[Standing]


def run_payload(run: TrainingRun) -> dict:
    return {
        "id": run.pk,
        "project": run.project.slug,
        "kind": run.kind,
        "state": run.state,
        "reason": run.reason,
        "progress": run.progress,
        "step": run.step,
        "total_steps": run.total_steps,
        "config": run.config,
        "error": run.error,
        "worker": run.worker,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at and run.started_at.isoformat(),
        "finished_at": run.finished_at and run.finished_at.isoformat(),
        "outputs": run.outputs,
        "reward_model": run.reward_model_out_id and run.reward_model_out.version,
    }


def _managed_run(request: HttpRequest, run_id: int) -> TrainingRun:
    run = get_object_or_404(TrainingRun.objects.select_related("project", "reward_model_out"), pk=run_id)
    access.project_for_manager(request.user, run.project.slug)
    return run


@router.get("/projects/{slug:slug}/reward-models", url_name="api-reward-models",
            response={200: RewardModelPage, **problems(400, 403, 404)},
            summary="Reward-model versions with their metrics, newest first (managers)")
def reward_models(request: HttpRequest, slug: str, params: Query[PageIn]):
    project = access.project_for_manager(request.user, slug)
    rows = RewardModel.objects.filter(project=project).select_related("snapshot").order_by("-version")
    return page(request, rows, params, "reward_models", lambda rm: {
        "version": rm.version, "backbone": rm.backbone, "state": rm.state, "votes": rm.votes, "pairs": rm.pairs,
        "snapshot_sha256": rm.snapshot.sha256, "metrics": rm.metrics, "artifact_uri": rm.artifact_uri,
        "created_at": rm.created_at.isoformat()})


@router.get("/runs/{int:run_id}", url_name="api-run", response={200: Run, **_MANAGERS},
            summary="A run's state and progress (managers)")
def run_detail(request: HttpRequest, run_id: int):
    return run_payload(_managed_run(request, run_id))


@router.post("/runs/{int:run_id}/cancel", url_name="api-run-cancel", response={200: Run, **_MANAGERS},
             summary="Cancel a run at its next step (managers)")
def run_cancel_view(request: HttpRequest, run_id: int):
    return run_payload(run_cancel(run=_managed_run(request, run_id)))


_START_BODY = 'send {"kind": ..., "config": {...}}, optionally with "checkpoint", "rivals", "snapshot", "reward_model"'


def _start_inputs(body: dict) -> dict:
    """The named inputs of a start request, type-checked (ValueError names the field)."""
    named = {}
    for key, kind, what in (("checkpoint", str, "a checkpoint name"), ("snapshot", int, "a snapshot id"),
                            ("reward_model", int, "a reward-model version")):
        value = body.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{key} must be {what}, not {value!r}")
        named[key] = value
    rivals = body.get("rivals")
    if rivals is not None and not (isinstance(rivals, list) and all(isinstance(r, str) for r in rivals)):
        raise ValueError("rivals must be a list of checkpoint names")
    named["rivals"] = rivals
    return named


def _start(request: HttpRequest, slug: str, *, kind: str | None = None) -> Status:
    project = access.project_for_manager(request.user, slug)
    body = json_body(request)
    body = {} if body is None else body
    if not isinstance(body, dict) or not isinstance(body.get("config", {}), dict):
        raise ApiError("invalid_request", _START_BODY)
    if kind is not None:  # the alias reads the config alone, as it always did
        body = {"kind": kind, "config": body.get("config", {})}
    unknown = sorted(set(body) - {"kind", "config", "checkpoint", "rivals", "snapshot", "reward_model", "prompts"})
    if unknown:
        raise ApiError("invalid_request", f"unknown fields {', '.join(unknown)}: {_START_BODY}")
    for field, value in body.items():
        if found := unstorable(value, field):
            raise ApiError("invalid_request", " ".join(found))
    kind = str(body.get("kind", ""))
    config = dict(body.get("config") or {})
    if "prompts" in body and kind == TrainingRun.Kind.GENERATION:  # beside the config too, as at first
        config.setdefault("prompts", body["prompts"])
    try:
        run = run_start(project=project, kind=kind, config=config, reason="started through the API",
                        **inputs_by_name(project, **_start_inputs(body)))
    except ValueError as error:
        raise ApiError("invalid_request", str(error)) from None
    return Status(202, run_payload(run))


@router.post("/projects/{slug:slug}/runs", url_name="api-runs-start", response={202: Run, **problems(400, 403, 404)},
             summary="Start a run of any kind (managers): reward_model, dpo, ppo or generation",
             openapi_extra=body_doc(RunStartIn))
def runs_start(request: HttpRequest, slug: str):
    return _start(request, slug)


@router.get("/projects/{slug:slug}/runs", url_name="api-runs", response={200: RunPage, **problems(400, 403, 404)},
            summary="The project's runs, newest first, optionally of one kind or state (managers)")
def runs(request: HttpRequest, slug: str, params: Query[RunsIn]):
    project = access.project_for_manager(request.user, slug)
    rows = TrainingRun.objects.filter(project=project).select_related("project", "reward_model_out")
    if params.kind:
        rows = rows.filter(kind=params.kind)
    if params.state:
        rows = rows.filter(state=params.state)
    return page(request, rows.order_by("-created_at", "-id"), params, "runs", run_payload)


@router.post("/projects/{slug:slug}/reward-models/train", url_name="api-rm-train",
             response={202: Run, **problems(400, 403, 404)},
             summary="Queue a reward-model training run (managers); an alias of POST /api/projects/{slug}/runs "
                     "with kind reward_model", openapi_extra=body_doc(RewardModelTrainIn))
def reward_model_train(request: HttpRequest, slug: str):
    return _start(request, slug, kind=TrainingRun.Kind.REWARD_MODEL)


def _checkpoint_json(checkpoint: Checkpoint) -> dict:
    produced = getattr(checkpoint, "produced_by", None)
    return {"id": checkpoint.pk, "name": checkpoint.name, "state": checkpoint.state,
            "parent": checkpoint.parent.name if checkpoint.parent_id else None, "uri": checkpoint.uri,
            "endpoint_url": checkpoint.endpoint_url, "endpoint_model": checkpoint.endpoint_model,
            "meta": checkpoint.meta, "run": produced.pk if produced else None, "created_at": checkpoint.created_at}


@router.get("/projects/{slug:slug}/checkpoints", url_name="api-checkpoints",
            response={200: CheckpointPage, **problems(400, 403, 404)},
            summary="The project's checkpoints, newest first, with their lineage (managers)")
def checkpoint_list(request: HttpRequest, slug: str, params: Query[PageIn]):
    project = access.project_for_manager(request.user, slug)
    rows = Checkpoint.objects.filter(project=project).select_related("parent", "produced_by").newest_first()
    return page(request, rows, params, "checkpoints", _checkpoint_json)


def _standing(entry: checkpoints.Entry) -> dict:
    rating = entry.rating
    return {"rank": entry.rank, "checkpoint": entry.checkpoint.name, "checkpoint_id": entry.checkpoint.pk,
            "state": entry.checkpoint.state, "score": rating and rating.score, "lower": rating and rating.lower,
            "upper": rating and rating.upper, "games": rating.games if rating else 0,
            "wins": rating.wins if rating else 0.0, "run": entry.run.pk if entry.run else None}


@router.get("/projects/{slug:slug}/leaderboard", url_name="api-leaderboard",
            response={200: LeaderboardPage, **problems(400, 403, 404)},
            summary="Checkpoints ranked by human battle votes (Bradley–Terry, 95% intervals), the same "
                    "board as the console's (managers)")
def leaderboard(request: HttpRequest, slug: str, params: Query[PageIn]):
    project = access.project_for_manager(request.user, slug)
    board = checkpoints.leaderboard(project)
    body = page(request, board.entries, params, "leaderboard", _standing)
    return {**body, "incumbent": board.incumbent.name if board.incumbent else None,
            "battles": board.ranking.battles}
