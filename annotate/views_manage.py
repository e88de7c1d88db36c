"""Manager pages of the annotate app: project settings, imports, exports."""
from __future__ import annotations

import tempfile

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render

from annotate import access, exports, imports
from annotate.active import selection_enqueue
from annotate.forms import ImportForm, ProjectSettingsForm
from annotate.models import Comparison, Vote
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
    selection = (project.selection, project.serve_per_prompt)
    if request.method == "POST" and form.is_valid():
        form.save()
        if "votes_per_comparison" in form.changed_data:
            comparison_hints_clear(project=project)
        if (project.selection, project.serve_per_prompt) != selection:  # annotate.active: re-rank the queue
            rescore = project.selection != "fifo"  # fifo needs no model to restore the queue
            transaction.on_commit(lambda: selection_enqueue(project.pk, rescore=rescore))
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


EXPORT_PARAMS = ("format", "output", "sources", "reasons", "after", "before", "closed_only", "metadata", "real_names",
                 "aggregation", "confidence")
TRUE, FALSE = ("1", "true", "on", "yes"), ("", "0", "false", "off", "no")


@login_required
def export_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    context = {"project": project, "formats": exports.EXPORT_FORMATS, "outputs": exports.OUTPUTS,
               "sources": Vote.Source.choices, "reasons": Comparison.Reason.choices}
    return render(request, "annotate/manage_export.html", context)


def _flag(query: QueryDict, name: str) -> bool:
    value = query.get(name, "").strip().lower()
    if value not in TRUE + FALSE:
        raise exports.InvalidInput(f"{name} must be 1 or 0, not {value!r}")
    return value in TRUE


def export_params(query: QueryDict) -> dict:
    """An export request's query, checked: ``format``, ``output`` (jsonl, parquet), the command's filters
    (``sources`` and ``reasons`` repeated, ``after``, ``before``, ``closed_only``), ``metadata``,
    ``real_names``, ``aggregation`` (majority, model) and ``confidence``. Raises InvalidInput on anything
    else, so a misspelt parameter exports nothing."""
    unknown = sorted(set(query) - set(EXPORT_PARAMS))
    if unknown:
        raise exports.InvalidInput(f"unknown parameters {unknown}; known: {list(EXPORT_PARAMS)}")
    output = query.get("output", "jsonl")
    if output not in exports.OUTPUTS:
        raise exports.InvalidInput(f"output must be one of {list(exports.OUTPUTS)}, not {output!r}")
    filters: dict = {key: values for key in ("sources", "reasons") if (values := [v for v in query.getlist(key) if v])}
    filters |= {key: query[key].strip() for key in ("after", "before") if query.get(key, "").strip()}
    if _flag(query, "closed_only"):
        filters["closed_only"] = True
    return {"fmt": query.get("format", "trl"), "output": output, "filters": filters,
            "metadata": _flag(query, "metadata"), "real_names": _flag(query, "real_names"),
            "aggregation": query.get("aggregation", "majority"), "confidence": _flag(query, "confidence")}


def export_response(project, query: QueryDict) -> HttpResponse:
    """A download of an export: JSONL streamed, or Parquet written to a temporary file first (its
    footer comes last); memory stays flat either way. Raises InvalidInput before any byte is sent."""
    params = export_params(query)
    output = params.pop("output")
    plan = exports.export_plan(project=project, **params)
    name = f"{project.slug}-{plan.fmt}.{output}"
    if output == "jsonl":
        response = StreamingHttpResponse(plan.jsonl(), content_type="application/jsonl")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
    handle = tempfile.TemporaryFile()  # removed when FileResponse closes it
    try:
        exports.write_parquet(plan, handle)
    except BaseException:
        handle.close()
        raise
    handle.seek(0)
    return FileResponse(handle, as_attachment=True, filename=name, content_type="application/vnd.apache.parquet")


@login_required
def export_download(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    try:
        return export_response(project, request.GET)
    except exports.InvalidInput as error:
        return HttpResponseBadRequest(f"Nothing was exported: {error}", content_type="text/plain; charset=utf-8")
