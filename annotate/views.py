"""The annotator's pages: projects, guidelines, and the comparison page with its vote form.

Every form works as a plain POST without JavaScript; with htmx the next comparison
swaps in as the ``pair`` partial of ``annotate/compare.html``.

After a vote the page offers, for ``VOTE_UNDO_SECONDS``, to undo it (the comparison comes back)
or to say how much better the winner was. The vote it refers to is kept in the session, so the
page reads nothing more for it; the undo and strength forms check everything again.
"""
from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from annotate import access, review, selectors
from annotate.models import Comparison, Exclusion, Flag, Vote
from annotate.queue import comparison_next, comparison_skip
from annotate.services import InvalidInput
from annotate.votes import VoteError, vote_record, vote_strength_set, vote_withdraw


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


_LAST_VOTE = "last_vote"


def _last_vote(request: HttpRequest, project) -> dict | None:
    """The annotator's last vote in this project while it may still be undone, as the session holds it."""
    last = request.session.get(_LAST_VOTE)
    if not last or last.get("project") != project.pk:
        return None
    age = (timezone.now() - datetime.fromisoformat(last["at"])).total_seconds()
    left = settings.VOTE_UNDO_SECONDS - age
    if left <= 0:
        return None
    return {**last, "seconds_left": int(left), "label": dict(Vote.Choice.choices)[last["choice"]],
            "strength_label": dict(Vote.Strength.choices).get(last.get("strength"))}


def _remember(request: HttpRequest, project, vote: Vote) -> None:
    request.session[_LAST_VOTE] = {"id": vote.pk, "project": project.pk, "comparison": vote.comparison_id,
                                   "choice": vote.choice, "strength": vote.strength,
                                   "at": vote.created_at.isoformat()}


def _render_next(request: HttpRequest, project, *, status: int = 200) -> HttpResponse:
    # The queue reads the prompt and both texts with the comparison; the page renders from that read.
    comparison = comparison_next(project=project, annotator=request.user)
    context = {
        "project": project,
        "comparison": comparison,
        "progress": selectors.progress_for(project=project, annotator=request.user),
        "idempotency_key": uuid.uuid4().hex,
        "strengths": Vote.Strength.choices,
        "last_vote": _last_vote(request, project),
        "flag_reasons": Flag.Reason.choices,
        # The gold rule (annotate.gold) or a manager left this person's votes out of the training data.
        "excluded": Exclusion.objects.standing(project).filter(user=request.user).exists(),
    }
    template = "annotate/compare.html#pair" if request.htmx else "annotate/compare.html"
    return render(request, template, context, status=status)


@login_required
def compare(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_annotator(request.user, slug)
    return _render_next(request, project)


def _form_int(value: str | None) -> int | str | None:
    """A whole number posted by a form; left empty, None. Anything else is passed on as sent, so that
    ``vote_record`` refuses it naming the field instead of the vote silently losing it."""
    if value in (None, ""):
        return None
    return int(value) if value.isdecimal() and len(value) < 20 else value


@login_required
@require_POST
def vote(request: HttpRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access.project_for_annotator(request.user, slug)
    get_object_or_404(Comparison, pk=comparison_id, project=project)
    try:
        outcome = vote_record(
            annotator=request.user,
            comparison_id=comparison_id,
            choice=request.POST.get("choice", ""),
            strength=_form_int(request.POST.get("strength")),
            rationale=request.POST.get("rationale", ""),
            time_spent_ms=_form_int(request.POST.get("time_spent_ms")),
            idempotency_key=request.POST.get("idempotency_key", ""),
        )
    except VoteError as error:
        messages.warning(request, str(error))
        if error.status == 400 and not request.htmx:
            # A value no form of ours sends: say so with the page and a 400, not a redirect that looks like success.
            return _render_next(request, project, status=400)
    else:
        _remember(request, project, outcome.vote)
    return _next(request, project)


def _next(request: HttpRequest, project) -> HttpResponse:
    if request.htmx:
        return _render_next(request, project)
    return redirect("compare", slug=project.slug)


@login_required
@require_POST
def undo(request: HttpRequest, slug: str, vote_id: int) -> HttpResponse:
    """Withdraw the annotator's own vote within the undo window; its comparison is shown again."""
    project = access.project_for_annotator(request.user, slug)
    try:
        withdrawn = vote_withdraw(annotator=request.user, vote_id=vote_id)
    except VoteError as error:
        messages.warning(request, str(error))
    else:
        messages.info(request, f"Your vote “{withdrawn.get_choice_display()}” was undone: vote again on this pair.")
    request.session.pop(_LAST_VOTE, None)
    return _next(request, project)


@login_required
@require_POST
def vote_strength(request: HttpRequest, slug: str, vote_id: int) -> HttpResponse:
    """Say how much better the winner of the annotator's last vote was, after the choice."""
    project = access.project_for_annotator(request.user, slug)
    try:
        raw = request.POST.get("strength", "")
        vote = vote_strength_set(annotator=request.user, vote_id=vote_id,
                                 strength=int(raw) if raw.isdecimal() and len(raw) < 3 else (raw or None))
    except VoteError as error:
        messages.warning(request, str(error))
    else:
        last = request.session.get(_LAST_VOTE)
        if last and last.get("id") == vote.pk:
            request.session[_LAST_VOTE] = {**last, "strength": vote.strength}
    return _next(request, project)


@login_required
@require_POST
def flag(request: HttpRequest, slug: str, comparison_id: int) -> HttpResponse:
    """Report a broken or harmful comparison: it leaves the queue until a manager reviews it."""
    project = access.project_for_annotator(request.user, slug)
    comparison = get_object_or_404(Comparison, pk=comparison_id, project=project)
    try:
        review.comparison_flag(comparison=comparison, annotator=request.user,
                               reason=request.POST.get("reason", ""), note=request.POST.get("note", ""))
    except InvalidInput as error:
        messages.warning(request, f"The flag was not recorded: {error}")
    else:
        messages.info(request, "Thank you: the pair is out of the queue until a manager has looked at it.")
    return _next(request, project)


@login_required
@require_POST
def skip(request: HttpRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access.project_for_annotator(request.user, slug)
    comparison = get_object_or_404(Comparison, pk=comparison_id, project=project)
    comparison_skip(comparison=comparison, annotator=request.user)
    return _next(request, project)
