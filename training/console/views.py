"""The manager's console: dashboard, runs, reward models, leaderboard, datasets, annotators.

Every view starts with ``access.project_for_manager`` (404 for strangers, 403 for annotators),
then calls one selector or service and renders. Forms work as plain POSTs without JavaScript;
the live panels (run progress, the runs table) poll with htmx and stop with
``HttpResponseStopPolling`` (286) once nothing is left running.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from annotate import access, gold, reliability, stats
from annotate.boundary import form_id
from annotate.exports import FORMATS
from annotate.models import Checkpoint, Exclusion, Snapshot, Vote
from annotate.services import InvalidInput
from annotate.snapshots import snapshot_freeze, snapshot_left_out
from training import checkpoints
from training.console import datasets, figures, selectors
from training.console.forms import START_FORMS, FreezeForm, LoopSettingsForm, PromoteForm, RunFilterForm
from training.console.guard import guard_panel
from training.loop import loop_settings, loop_status
from training.models import TrainingRun
from training.runs import run_cancel, runs_reap_stale
from training.starts import run_retry, run_start

RUNS_PER_PAGE = 50
SNAPSHOTS_PER_PAGE = 50


def _live(request: HttpRequest, template: str, context: dict, *, done: bool) -> HttpResponse:
    """A polled fragment: 286 (htmx stops polling, then swaps it in) once there is nothing left to watch."""
    if not done:
        return render(request, template, context)
    return HttpResponseStopPolling(render_to_string(template, context, request=request))


@login_required
def dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    runs_reap_stale()  # one indexed UPDATE: runs whose worker died stop showing as running
    data = selectors.dashboard(project)
    charts = {"votes": figures.votes_per_day(data), "queue": figures.queue_depth(data)}
    return render(request, "training/dashboard.html", {"project": project, "data": data, "charts": charts,
                                                       "left_out": snapshot_left_out(project)})


@login_required
def runs(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    runs_reap_stale()
    form = RunFilterForm(request.GET)
    chosen = {k: v for k, v in form.cleaned_data.items() if v} if form.is_valid() else {}
    rows = selectors.run_rows(project).filter(**chosen).order_by("-created_at", "-id")
    page = Paginator(rows, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    counts = selectors.run_counts(project)
    context = {
        "project": project, "page": page, "chosen": chosen, "query": urlencode(chosen),
        "kinds": [(value, label, counts["kind"].get(value, 0)) for value, label in TrainingRun.Kind.choices],
        "states": [(value, label, counts["state"].get(value, 0)) for value, label in TrainingRun.State.choices],
        "polling": any(not run.finished for run in page),
    }
    if request.htmx:
        return _live(request, "training/runs.html#table", context, done=not context["polling"])
    return render(request, "training/runs.html", context)


@login_required
def run_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    kind = request.POST.get("kind") or request.GET.get("kind") or TrainingRun.Kind.REWARD_MODEL
    if kind not in START_FORMS:
        raise Http404("No such kind of run.")
    form = START_FORMS[kind](request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        kwargs = form.start_kwargs()
        kwargs["reason"] = kwargs["reason"] or f"started from the console by {request.user.username}"
        try:
            run = run_start(project=project, **kwargs)
        except ValueError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"{run.get_kind_display().capitalize()} run {run.pk} is queued.")
            return redirect("console-run", slug=project.slug, run_id=run.pk)
    context = {"project": project, "form": form, "kind": kind, "kinds": TrainingRun.Kind.choices,
               "kind_label": TrainingRun.Kind(kind).label}
    return render(request, "training/run_new.html", context)


def _run(project, run_id: int) -> TrainingRun:
    try:
        return selectors.run_for_page(project, run_id)
    except TrainingRun.DoesNotExist:
        raise Http404("No such run in this project.") from None


@login_required
def run_detail(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    run = _run(project, run_id)
    view = selectors.run_view(run)
    context = {"project": project, "run": run, "view": view, "charts": figures.run_metric_charts(view),
               "config_json": json.dumps(run.config, indent=2, sort_keys=True)}
    if request.htmx:
        return _live(request, "training/run_detail.html#live", context, done=run.finished)
    return render(request, "training/run_detail.html", context)


@login_required
@require_POST
def run_cancel_view(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    run = run_cancel(run=_run(project, run_id))
    note = "cancelled" if run.finished else "asked to stop at its next step"
    messages.success(request, f"Run {run.pk} {note}.")
    return redirect("console-run", slug=project.slug, run_id=run.pk)


@login_required
@require_POST
def run_retry_view(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    run = _run(project, run_id)
    try:
        retry = run_retry(run=run)
    except ValueError as error:
        messages.error(request, str(error))
        return redirect("console-run", slug=project.slug, run_id=run.pk)
    messages.success(request, f"Run {retry.pk} retries run {run.pk}.")
    return redirect("console-run", slug=project.slug, run_id=retry.pk)


@login_required
def reward_models(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    models = selectors.reward_models(project)
    agreement = stats.project_agreement(project=project, sources=[Vote.Source.HUMAN])
    ceiling = agreement.decisive
    rows = [(rm, rm.accuracy / ceiling if ceiling and isinstance(rm.accuracy, float) else None) for rm in models]
    context = {"project": project, "rows": rows, "agreement": agreement,
               "chart": figures.accuracy_against_votes(models, agreement)}
    return render(request, "training/reward_models.html", context)


@login_required
def leaderboard(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    board = checkpoints.leaderboard(project)
    rows = [(entry, *checkpoints.promotion_verdict(board, entry.checkpoint)) for entry in board.entries]
    context = {"project": project, "board": board, "rows": rows, "charts": figures.leaderboard_charts(board),
               "promotions": checkpoints.promotions(project)}
    return render(request, "training/leaderboard.html", context)


@login_required
def loop(request: HttpRequest, slug: str) -> HttpResponse:
    """The loop's settings: whether it turns by itself, how each policy update learns, automatic promotion."""
    project = access.project_for_manager(request.user, slug)
    settings = loop_settings(project)
    form = LoopSettingsForm(request.POST or None, instance=settings)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Loop settings saved.")
        return redirect("console-loop", slug=project.slug)
    return render(request, "training/loop.html", {"project": project, "form": form, "status": loop_status(project)},
                  status=400 if form.errors else 200)


@login_required
def guard(request: HttpRequest, slug: str) -> HttpResponse:
    """Reward hacking: proxy reward against human win rate, KL from the base, the canary set's accuracy."""
    project = access.project_for_manager(request.user, slug)
    panel = guard_panel(project)
    return render(request, "training/guard.html", {"project": project, "panel": panel,
                                                   "charts": figures.guard_charts(panel)})


@login_required
@require_POST
def promote(request: HttpRequest, slug: str, checkpoint_id: int) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    checkpoint = get_object_or_404(Checkpoint, pk=checkpoint_id, project=project)
    form = PromoteForm(request.POST)
    reason = form.cleaned_data["override_reason"] if form.is_valid() else ""
    try:
        promotion = checkpoints.checkpoint_promote(checkpoint=checkpoint, by=request.user, override_reason=reason)
    except checkpoints.PromotionRefused as error:
        messages.error(request, str(error))
    else:
        how = f" (override: {promotion.override_reason})" if promotion.override_reason else ""
        messages.success(request, f"{checkpoint.name} is now the incumbent{how}.")
    return redirect("console-leaderboard", slug=project.slug)


@login_required
def datasets_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    page = Paginator(selectors.snapshots(project), SNAPSHOTS_PER_PAGE).get_page(request.GET.get("page"))
    context = {"project": project, "page": page, "formats": FORMATS, "form": FreezeForm()}
    return render(request, "training/datasets.html", context)


@login_required
@require_POST
def freeze(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    form = FreezeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Nothing was frozen: " + "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect("console-datasets", slug=project.slug)
    try:
        snapshot = snapshot_freeze(project=project, filters={**form.filters(), "for": f"console, {request.user.username}"})
    except InvalidInput as error:
        messages.error(request, f"Nothing was frozen: {error}")
    else:
        messages.success(request, f"Snapshot {snapshot.pk} frozen: {snapshot.count} pairs from {snapshot.votes} votes.")
    return redirect("console-datasets", slug=project.slug)


@login_required
def snapshot_download(request: HttpRequest, slug: str, snapshot_id: int) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    snapshot = get_object_or_404(Snapshot.objects.select_related("project"), pk=snapshot_id, project=project)
    fmt = request.GET.get("format", "pairs")
    try:
        chunks = datasets.snapshot_stream(snapshot, fmt)
    except InvalidInput as error:
        return HttpResponse(str(error), status=400 if fmt not in FORMATS else 410, content_type="text/plain")
    response = StreamingHttpResponse(chunks, content_type="application/jsonl")
    response["Content-Disposition"] = f'attachment; filename="{datasets.download_name(snapshot, fmt)}"'
    return response


ANNOTATOR_SORTS = {
    "votes": lambda r: -r.stats.votes,
    "agreement": lambda r: (r.stats.agreement is None, r.stats.agreement or 0.0),
    "gold": lambda r: (r.gold is None or not r.gold.votes, r.gold.accuracy if r.gold and r.gold.votes else 0.0),
    "bias": lambda r: -abs((r.stats.a_share if r.stats.a_share is not None else 0.5) - 0.5),
    "excluded": lambda r: (r.exclusion is None, r.stats.username),
    "competence": lambda r: (r.reliability is None, r.reliability["competence"] if r.reliability else 0.0),
    "name": lambda r: r.stats.username,
}


@dataclass(frozen=True)
class _AnnotatorRow:
    stats: stats.AnnotatorStats
    gold: gold.GoldAccuracy | None
    exclusion: Exclusion | None
    reliability: dict | None = None  # this person in the latest reliability fit (annotate.reliability)


@login_required
def annotators(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    every_source = request.GET.get("sources") == "all"
    sort = request.GET.get("sort") if request.GET.get("sort") in ANNOTATOR_SORTS else "votes"
    figures_rows, agreement = stats.annotator_report(project=project,
                                                     sources=None if every_source else [Vote.Source.HUMAN])
    scores = gold.gold_accuracy(project=project)
    excluded = {e.user_id: e for e in Exclusion.objects.standing(project)}
    fit = reliability.latest_fit(project)
    people = fit.people if fit else {}
    rows = sorted((_AnnotatorRow(r, scores.get(r.user_id), excluded.get(r.user_id), people.get(str(r.user_id)))
                   for r in figures_rows), key=ANNOTATOR_SORTS[sort])
    history = Exclusion.objects.filter(project=project).select_related("user", "created_by", "lifted_by") \
        .order_by("-created_at")[:20]
    context = {"project": project, "rows": rows, "agreement": agreement, "every_source": every_source,
               "sort": sort, "query": "sources=all&" if every_source else "", "history": history,
               "judge": stats.judge_agreement(project=project), "fit": fit,
               "chart": figures.agreement_by_annotator(figures_rows, agreement)}
    return render(request, "training/annotators.html", context)


@login_required
@require_POST
def annotators_fit(request: HttpRequest, slug: str) -> HttpResponse:
    """Queue a fit of the annotator reliability model now."""
    project = access.project_for_manager(request.user, slug)
    reliability.reliability_fit_enqueue(project.pk, force=True)
    messages.success(request, "A reliability fit is queued: reload in a moment for its figures.")
    return redirect("console-annotators", slug=project.slug)


@login_required
@require_POST
def annotator_standing(request: HttpRequest, slug: str) -> HttpResponse:
    """Exclude a person's votes from the training data (with a reason), or reinstate them."""
    project = access.project_for_manager(request.user, slug)
    user_id = form_id(request.POST.get("user", ""))
    try:
        if request.POST.get("action") == "reinstate":
            gold.exclusion_lift(project=project, user_id=user_id, by=request.user,
                                reason=request.POST.get("reason", ""))
            messages.success(request, "Reinstated: their votes count in the next snapshot.")
        elif request.POST.get("action") == "exclude":
            gold.exclusion_add(project=project, user_id=user_id, by=request.user,
                               reason=request.POST.get("reason", ""))
            messages.success(request, "Excluded: their votes leave the next snapshot.")
        else:
            raise InvalidInput("action must be exclude or reinstate")
    except InvalidInput as error:
        return HttpResponse(f"Nothing changed: {error}", status=400, content_type="text/plain; charset=utf-8")
    return redirect("console-annotators", slug=project.slug)
