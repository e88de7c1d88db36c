"""Manager pages of the annotate app: project settings, imports, exports."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render

from annotate import access, exports, imports
from annotate.forms import ImportForm, ProjectSettingsForm
from annotate.queue import comparison_hints_clear

IMPORTERS = {
    "prompts": imports.import_prompts,
    "completions": imports.import_completions,
    "preferences": imports.import_preferences,
}


@login_required
def settings_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    form = ProjectSettingsForm(request.POST or None, instance=project)
    if request.method == "POST" and form.is_valid():
        form.save()
        if "votes_per_comparison" in form.changed_data:
            comparison_hints_clear(project=project)
        messages.success(request, "Settings saved.")
        return redirect("manage-settings", slug=project.slug)
    return render(request, "annotate/manage_settings.html", {"project": project, "form": form})


@login_required
def import_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            result = IMPORTERS[form.cleaned_data["kind"]](project=project, stream=upload, filename=upload.name)
        except imports.InvalidInput as error:
            form.add_error("file", f"Nothing was imported from {upload.name}: {error}")
        else:
            messages.success(
                request,
                f"Imported {result.created} new rows from {upload.name} "
                f"({result.skipped} already present, {result.comparisons} comparisons created).",
            )
            return redirect("manage-import", slug=project.slug)
    return render(request, "annotate/manage_import.html", {"project": project, "form": form})


@login_required
def export_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    return render(request, "annotate/manage_export.html", {"project": project, "formats": exports.FORMATS})


def export_response(project, fmt: str) -> HttpResponse:
    """A streamed JSONL download; memory stays flat however many votes there are."""
    if fmt not in exports.FORMATS:
        return HttpResponseBadRequest(f"format must be one of {', '.join(exports.FORMATS)}")
    response = StreamingHttpResponse(exports.export_stream(project=project, fmt=fmt), content_type="application/jsonl")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-{fmt}.jsonl"'
    return response


@login_required
def export_download(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    return export_response(project, request.GET.get("format", "trl"))
