"""The manager's review of flagged comparisons (``annotate.review``)."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from annotate import access, review
from annotate.boundary import form_id
from annotate.models import Flag
from annotate.services import InvalidInput


@login_required
def flags_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    return render(request, "annotate/manage_flags.html", {
        "project": project,
        "flagged": review.flagged_comparisons(project=project),
        "resolutions": Flag.Resolution.choices,
    })


@login_required
@require_POST
def flag_resolve(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    try:
        comparison = review.flag_resolve(
            project=project, manager=request.user, resolution=request.POST.get("resolution", ""),
            comparison_id=form_id(request.POST.get("comparison", "")),
        )
    except InvalidInput as error:
        messages.warning(request, str(error))
        return render(request, "annotate/manage_flags.html", {
            "project": project, "flagged": review.flagged_comparisons(project=project),
            "resolutions": Flag.Resolution.choices,
        }, status=400)
    messages.success(request, f"Comparison {comparison.pk} is now {comparison.get_state_display()}.")
    return redirect("manage-flags", slug=project.slug)
