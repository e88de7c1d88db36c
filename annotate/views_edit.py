"""The annotator's edit page: rewrite the better answer of a pair (annotate.edits), without JavaScript.

GET shows the prompt, the other answer for reference and a textarea holding the chosen answer's raw
text (escaped by the template, never rendered as markdown); POST records the edit and goes on to the
next pair, as a vote does. A refused edit shows the page again with the text as sent, so nothing typed
is lost.
"""
from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from annotate import access
from annotate.edits import SIDES, EditError, EditNotAllowed, NotEditable, edit_record, edit_source
from annotate.models import Comparison
from annotate.votes import VoteError


@login_required
@require_http_methods(["GET", "POST"])
def edit(request: HttpRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access.project_for_annotator(request.user, slug)
    comparison = get_object_or_404(
        Comparison.objects.select_related("prompt", "completion_a", "completion_b", "project"),
        pk=comparison_id, project=project,
    )
    side = request.POST.get("side", "") if request.method == "POST" else request.GET.get("side", "")
    if request.method == "GET":
        try:  # without a side yet, whether any answer of the pair may be edited
            original = edit_source(comparison=comparison, annotator=request.user, side=side if side in SIDES else "a")
        except EditError as error:
            messages.warning(request, f"This answer cannot be edited: {error}")
            return redirect("compare", slug=project.slug)
        if side not in SIDES:  # ask which answer is the better one
            return _page(request, comparison, side="", text="")
        return _page(request, comparison, side=side, text=original.text)
    # Browsers send a textarea's line breaks as CRLF; the answers are stored with LF.
    text = request.POST.get("text", "").replace("\r\n", "\n")
    try:
        outcome = edit_record(comparison=comparison, annotator=request.user, side=side, text=text,
                              idempotency_key=request.POST.get("idempotency_key", ""))
    except (EditNotAllowed, NotEditable) as error:
        messages.warning(request, f"Your edit was not recorded: {error}")
        return redirect("compare", slug=project.slug)
    except (EditError, VoteError) as error:
        return _page(request, comparison, side=side if side in SIDES else "", text=text, error=str(error),
                     status=error.status)
    if outcome.created:
        messages.success(request, f"Your edit of answer {side.upper()} is saved, recorded as better than the original.")
    else:
        messages.info(request, "This edit was already saved; nothing new was recorded.")
    if outcome.vote_note:
        messages.warning(request, outcome.vote_note[0].upper() + outcome.vote_note[1:])
    return redirect("compare", slug=project.slug)


def _page(request: HttpRequest, comparison: Comparison, *, side: str, text: str, error: str = "",
          status: int = 200) -> HttpResponse:
    other = None
    if side in SIDES:
        other = comparison.completion_b if side == "a" else comparison.completion_a
    context = {
        "project": comparison.project,
        "comparison": comparison,
        "side": side,
        "other_side": {"a": "b", "b": "a"}.get(side, ""),
        "text": text,
        "other": other,
        "error": error,
        "idempotency_key": request.POST.get("idempotency_key") or uuid.uuid4().hex,
    }
    return render(request, "annotate/edit.html", context, status=status)
