"""The annotator's pages: projects, guidelines, and the comparison page with its vote form.

Every form works as a plain POST without JavaScript; with htmx the next comparison
swaps in as the ``pair`` partial of ``annotate/compare.html``.
"""
from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from annotate import access, selectors
from annotate.models import Comparison, Vote
from annotate.queue import comparison_next, comparison_skip
from annotate.votes import VoteError, vote_record


@login_required
def home(request: HttpRequest) -> HttpResponse:
    projects = list(access.projects_of(request.user))
    counts = selectors.project_counts([p.pk for p in projects])
    rows = [(p, counts[p.pk]) for p in projects]
    return render(request, "annotate/home.html", {"rows": rows})


@login_required
def guidelines(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_annotator(request.user, slug)
    return render(request, "annotate/guidelines.html", {"project": project})


def _render_next(request: HttpRequest, project, *, status: int = 200) -> HttpResponse:
    # The queue reads the prompt and both texts with the comparison; the page renders from that read.
    comparison = comparison_next(project=project, annotator=request.user)
    context = {
        "project": project,
        "comparison": comparison,
        "progress": selectors.progress_for(project=project, annotator=request.user),
        "idempotency_key": uuid.uuid4().hex,
        "strengths": Vote.Strength.choices,
    }
    template = "annotate/compare.html#pair" if request.htmx else "annotate/compare.html"
    return render(request, template, context, status=status)


@login_required
def compare(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_annotator(request.user, slug)
    return _render_next(request, project)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


@login_required
@require_POST
def vote(request: HttpRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access.project_for_annotator(request.user, slug)
    get_object_or_404(Comparison, pk=comparison_id, project=project)
    try:
        vote_record(
            annotator=request.user,
            comparison_id=comparison_id,
            choice=request.POST.get("choice", ""),
            strength=_int_or_none(request.POST.get("strength")),
            rationale=request.POST.get("rationale", ""),
            time_spent_ms=_int_or_none(request.POST.get("time_spent_ms")),
            idempotency_key=request.POST.get("idempotency_key", ""),
        )
    except VoteError as error:
        messages.warning(request, str(error))
    if request.htmx:
        return _render_next(request, project)
    return redirect("compare", slug=project.slug)


@login_required
@require_POST
def skip(request: HttpRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access.project_for_annotator(request.user, slug)
    comparison = get_object_or_404(Comparison, pk=comparison_id, project=project)
    comparison_skip(comparison=comparison, annotator=request.user)
    if request.htmx:
        return _render_next(request, project)
    return redirect("compare", slug=project.slug)
