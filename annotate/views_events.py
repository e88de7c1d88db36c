"""The live feed (server-sent events) and the manager's webhooks page (``annotate.events``).

The stream is ``text/event-stream``: one ``id:``/``event:``/``data:`` block per stored event, a
``votes.progress`` block whenever new votes arrived (``{"new_votes": n, "last_vote": id}``; not
stored, no id), and a comment line as a keep-alive. It ends after ``EVENTS_STREAM_SECONDS``;
``EventSource`` reconnects by itself and sends ``Last-Event-ID``, so nothing is missed. Two doors:
``GET /api/projects/<slug>/events`` with a bearer token, and ``GET /p/<slug>/events/`` with the
browser's session (an ``EventSource`` cannot send a header). Members of the project only.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from annotate import access, events
from annotate.api import api_view
from annotate.boundary import form_id
from annotate.models import Project, Webhook, WebhookDelivery
from annotate.services import InvalidInput

POLL_S = 1.0
KEEPALIVE_S = 15.0


def _after(request: HttpRequest) -> int:
    after = form_id(request.headers.get("Last-Event-ID") or request.GET.get("after") or "0")
    return after if isinstance(after, int) else 0


def _frames(project: Project, after: int, seconds: float) -> Iterator[bytes]:
    deadline = time.monotonic() + seconds
    last_vote = events.last_vote_id(project)  # counted from when the stream opened
    yield b"retry: 2000\n\n"
    quiet_since = time.monotonic()
    while True:
        sent = False
        for event in events.events_after(project=project, after=after):
            payload = json.dumps({"id": event.pk, "type": event.type, "created_at": event.created_at.isoformat(),
                                  "data": event.data}, ensure_ascii=False, separators=(",", ":"))
            yield f"id: {event.pk}\nevent: {event.type}\ndata: {payload}\n\n".encode()
            after, sent = event.pk, True
        new, last_vote_now = events.votes_since(project, last_vote)
        if new:
            yield (f"event: votes.progress\ndata: "
                   f"{json.dumps({'new_votes': new, 'last_vote': last_vote_now})}\n\n").encode()
            last_vote, sent = last_vote_now, True
        if sent:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        if time.monotonic() >= deadline:
            return
        time.sleep(POLL_S)


def _ending_quietly(frames: Iterator[bytes]) -> Iterator[bytes]:
    # The database went away mid-stream (a restart): end the response; the browser reconnects with
    # Last-Event-ID and misses nothing.
    try:
        yield from frames
    except DatabaseError:
        return


def _stream(request: HttpRequest, project: Project) -> StreamingHttpResponse:
    frames = _frames(project, _after(request), settings.EVENTS_STREAM_SECONDS)
    response = StreamingHttpResponse(_ending_quietly(frames), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each frame on at once
    return response


@require_GET
@api_view(scope="project")
def events_api(request: HttpRequest, slug: str) -> HttpResponse:
    if not request.caller.may_annotate():
        raise Http404("No such project.")
    return _stream(request, request.caller.project)


@login_required
@require_GET
def events_page_stream(request: HttpRequest, slug: str) -> HttpResponse:
    return _stream(request, access.project_for_annotator(request.user, slug))


@login_required
def webhooks_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    status = 200
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "create":
                hook = events.webhook_create(project=project, url=request.POST.get("url", "").strip(),
                                             events=request.POST.getlist("events"))
                messages.success(request, f"Webhook {hook.pk} added: it receives the next events.")
            elif action == "delete":
                events.webhook_delete(project=project, webhook_id=form_id(request.POST.get("webhook", "")))
                messages.success(request, "Webhook deleted.")
            elif action == "redeliver":
                delivery = events.delivery_redeliver(project=project,
                                                     delivery_id=form_id(request.POST.get("delivery", "")))
                messages.success(request, f"Delivery {delivery.pk} queued again.")
            else:
                raise InvalidInput(f"unknown action {action!r:.30}")
        except InvalidInput as error:
            messages.warning(request, str(error))
            status = 400
        else:
            return redirect("manage-webhooks", slug=project.slug)
    hooks = list(Webhook.objects.filter(project=project).order_by("pk"))
    deliveries = list(WebhookDelivery.objects.filter(webhook__project=project).select_related("event", "webhook")
                      .order_by("-pk")[:50])
    return render(request, "annotate/manage_webhooks.html", {
        "project": project, "hooks": hooks, "deliveries": deliveries, "types": events.TYPES,
    }, status=status)


