"""JSON API for runs and reward models (managers only); same bearer tokens as the annotate API."""
from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET, require_POST

from annotate import access
from annotate.api import api_view
from annotate.boundary import unstorable
from rewardmodel.models import RewardModel
from training.models import TrainingRun
from training.runs import run_cancel
from training.starts import inputs_by_name, run_start


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


@require_GET
@api_view
def reward_models(request: HttpRequest, slug: str) -> JsonResponse:
    project = access.project_for_manager(request.user, slug)
    rows = RewardModel.objects.filter(project=project).select_related("snapshot").order_by("-version")
    return JsonResponse(
        {
            "reward_models": [
                {
                    "version": rm.version,
                    "backbone": rm.backbone,
                    "state": rm.state,
                    "votes": rm.votes,
                    "pairs": rm.pairs,
                    "snapshot_sha256": rm.snapshot.sha256,
                    "metrics": rm.metrics,
                    "artifact_uri": rm.artifact_uri,
                    "created_at": rm.created_at.isoformat(),
                }
                for rm in rows
            ]
        }
    )


@require_GET
@api_view
def run_detail(request: HttpRequest, run_id: int) -> JsonResponse:
    return JsonResponse(run_payload(_managed_run(request, run_id)))


@require_POST
@api_view
def run_cancel_view(request: HttpRequest, run_id: int) -> JsonResponse:
    return JsonResponse(run_payload(run_cancel(run=_managed_run(request, run_id))))


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


def _start(request: HttpRequest, slug: str, *, kind: str | None = None) -> JsonResponse:
    project = access.project_for_manager(request.user, slug)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "the request body is not valid JSON"}, status=400)
    except RecursionError:
        return JsonResponse({"error": "the request body is nested too deeply"}, status=400)
    if not isinstance(body, dict) or not isinstance(body.get("config", {}), dict):
        return JsonResponse({"error": _START_BODY}, status=400)
    if kind is not None:  # the alias reads the config alone, as it always did
        body = {"kind": kind, "config": body.get("config", {})}
    unknown = sorted(set(body) - {"kind", "config", "checkpoint", "rivals", "snapshot", "reward_model", "prompts"})
    if unknown:
        return JsonResponse({"error": f"unknown fields {', '.join(unknown)}: {_START_BODY}"}, status=400)
    for field, value in body.items():
        if found := unstorable(value, field):
            return JsonResponse({"error": " ".join(found)}, status=400)
    kind = str(body.get("kind", ""))
    config = dict(body.get("config") or {})
    if "prompts" in body and kind == TrainingRun.Kind.GENERATION:  # beside the config too, as at first
        config.setdefault("prompts", body["prompts"])
    try:
        run = run_start(project=project, kind=kind, config=config, reason="started through the API",
                        **inputs_by_name(project, **_start_inputs(body)))
    except ValueError as error:
        return JsonResponse({"error": str(error)}, status=400)
    return JsonResponse(run_payload(run), status=202)


@require_POST
@api_view
def runs_start(request: HttpRequest, slug: str) -> JsonResponse:
    """Start any kind of run: {"kind", "config"?, "checkpoint"?, "rivals"?, "snapshot"?, "reward_model"?}."""
    return _start(request, slug)


@require_POST
@api_view
def reward_model_train(request: HttpRequest, slug: str) -> JsonResponse:
    """Alias of ``runs_start`` with kind "reward_model" (the route the API had first)."""
    return _start(request, slug, kind=TrainingRun.Kind.REWARD_MODEL)
