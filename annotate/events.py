"""A project's events: stored once, streamed to dashboards (server-sent events) and POSTed to webhooks.

``event_emit`` records an event after the current transaction commits (an event is never about
something that was rolled back) and queues one delivery per active webhook that wants its type;
the Celery task ``annotate.webhook_deliver`` sends it. A delivery is a POST of the event as JSON
with the headers

    X-Flywheel-Event: checkpoint.published
    X-Flywheel-Delivery: 42
    X-Flywheel-Signature: t=1764950000,v1=<hex HMAC-SHA256 of f"{t}.{body}" under the webhook's secret>

A 2xx answer delivers it. A network error, a timeout, 408, 429 or any 5xx is tried again after
``WEBHOOK_BACKOFF_S`` seconds, doubling each time (a ``Retry-After`` in seconds is honoured when
longer), up to ``WEBHOOK_MAX_ATTEMPTS`` attempts; any other answer fails it at once (the receiver
refused it), as does a connection to an address webhooks may not reach (`annotate.egress`: public
addresses only, unless ``WEBHOOK_ALLOWED_NETWORKS`` lets a private one in). Every attempt's
outcome is on the delivery's row: the console's delivery log.

Types: ``vote.recorded``, ``snapshot.frozen``, ``run.state_changed``, ``checkpoint.published``,
``checkpoint.promoted``. Votes are the hot path, so a ``vote.recorded`` event is stored only while
some active webhook of the project wants it (a cached lookup; nothing is written otherwise); the
live stream shows vote counts without it (``votes.progress``). No event names an annotator.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from datetime import timedelta
from email.utils import parsedate_to_datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from annotate import egress
from annotate.models import Event, Project, Vote, Webhook, WebhookDelivery
from annotate.services import InvalidInput

log = logging.getLogger(__name__)

DELIVER = "annotate.webhook_deliver"
TYPES = tuple(t.value for t in Event.Type)
_RETRIED_STATUSES = {408, 425, 429}


def event_emit(*, project_id: int, type: str, data: dict) -> None:
    """Record the event once the current transaction commits, and queue its webhook deliveries."""
    if type not in TYPES:
        raise ValueError(f"unknown event type {type!r}")
    transaction.on_commit(lambda: _store(project_id, type, data))


def _store(project_id: int, type: str, data: dict) -> Event | None:
    try:
        with transaction.atomic():
            event = Event.objects.create(project_id=project_id, type=type, data=data)
            hooks = [h for h in Webhook.objects.filter(project_id=project_id, active=True) if h.wants(type)]
            deliveries = WebhookDelivery.objects.bulk_create(
                [WebhookDelivery(webhook=h, event=event, next_attempt_at=event.created_at) for h in hooks])
            transaction.on_commit(lambda: [_enqueue(d.pk) for d in deliveries])
        return event
    except Exception:  # noqa: BLE001 - an event is a side effect: it must never fail what it reports
        log.exception("could not record the %s event of project %s", type, project_id)
        return None


def _enqueue(delivery_id: int, countdown: float = 0) -> None:
    from celery import signature

    from config.celery import app

    if app.conf.task_always_eager and DELIVER not in app.tasks:
        app.autodiscover_tasks(["annotate"], force=True)  # eager: the task runs here, so it must be known
    try:
        signature(DELIVER, args=[delivery_id], app=app).apply_async(queue="default", countdown=countdown or None)
    except Exception:  # noqa: BLE001 - the broker is down: the row stays pending; webhooks_resume sends it later
        log.exception("could not queue webhook delivery %s", delivery_id)


# project id -> (monotonic time of the lookup, whether a webhook wants vote.recorded). Kept in this
# process's memory, not the cache: with Redis as the cache a lookup would cost every vote a round trip.
_wants_votes: dict[int, tuple[float, bool]] = {}
WANTS_VOTES_TTL_S = 30.0


def wants_votes(project_id: int) -> bool:
    """Whether an active webhook of the project wants ``vote.recorded``: looked up at most every 30 s per
    process (a webhook added or removed elsewhere takes effect here within that)."""
    now = time.monotonic()
    known = _wants_votes.get(project_id)
    if known is not None and now - known[0] < WANTS_VOTES_TTL_S:
        return known[1]
    found = any(h.wants(Event.Type.VOTE_RECORDED) for h in Webhook.objects.filter(project_id=project_id, active=True))
    _wants_votes[project_id] = (now, found)
    return found


def on_votes_recorded(sender, *, project_id: int, count: int, vote_ids=(), **_) -> None:
    """``votes_recorded`` receiver: one ``vote.recorded`` event per vote, only while a webhook wants it."""
    if not wants_votes(project_id):
        return
    if not vote_ids:  # an import: one event for the batch
        _store(project_id, Event.Type.VOTE_RECORDED, {"count": count})
        return
    for vote in Vote.objects.filter(pk__in=list(vote_ids)).values("id", "comparison_id", "choice", "strength",
                                                                  "source", "created_at"):
        _store(project_id, Event.Type.VOTE_RECORDED, {
            "vote": vote["id"], "comparison": vote["comparison_id"], "choice": vote["choice"],
            "strength": vote["strength"], "source": vote["source"], "at": vote["created_at"].isoformat()})


# Webhooks: the manager's side.

def webhook_create(*, project: Project, url, events=()) -> Webhook:
    """A new active webhook with a fresh secret. Raises InvalidInput for a URL that is not http(s) or an
    unknown event type."""
    if not isinstance(url, str) or len(url) > 500:
        raise InvalidInput("url must be an http:// or https:// URL of at most 500 characters")
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise InvalidInput(f"url must be an http:// or https:// URL, not {url!r:.60}") from None
    if (refusal := egress.host_refusal(url)) is not None:
        raise InvalidInput(f"url {url!r:.60} is refused: {refusal}")
    events = list(events)
    unknown = [e for e in events if e not in TYPES]
    if unknown:
        raise InvalidInput(f"unknown event types {unknown!r:.80}: choose from {list(TYPES)}")
    hook = Webhook.objects.create(project=project, url=url, events=sorted(set(events)),
                                  secret=secrets.token_hex(24))
    _wants_votes.pop(project.pk, None)
    return hook


def _an_id(value, what: str, project: Project) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise InvalidInput(f"project {project.slug} has no {what} {value!r:.20}")
    return value


def webhook_delete(*, project: Project, webhook_id) -> None:
    webhook_id = _an_id(webhook_id, "webhook", project)
    deleted, _ = Webhook.objects.filter(project=project, pk=webhook_id).delete()
    if not deleted:
        raise InvalidInput(f"project {project.slug} has no webhook {webhook_id!r:.20}")
    _wants_votes.pop(project.pk, None)


def delivery_redeliver(*, project: Project, delivery_id) -> WebhookDelivery:
    """Send a delivery again from its first attempt (a manager's retry after fixing the receiver)."""
    delivery_id = _an_id(delivery_id, "delivery", project)
    delivery = WebhookDelivery.objects.filter(pk=delivery_id, webhook__project=project).first()
    if delivery is None:
        raise InvalidInput(f"project {project.slug} has no delivery {delivery_id!r:.20}")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state=WebhookDelivery.State.PENDING, attempts=0,
                                                          next_attempt_at=timezone.now())
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Flywheel-Signature`` header's value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def body_of(event: Event) -> bytes:
    return json.dumps({"id": event.pk, "type": event.type, "project": event.project.slug,
                       "created_at": event.created_at.isoformat(), "data": event.data},
                      ensure_ascii=False, separators=(",", ":")).encode()


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
        except (TypeError, ValueError):
            return 0.0


def delivery_attempt(delivery_id: int) -> float | None:
    """Send one pending delivery once; the seconds to wait before the next attempt, or None when done."""
    delivery = (WebhookDelivery.objects.select_related("webhook", "event__project")
                .filter(pk=delivery_id, state=WebhookDelivery.State.PENDING).first())
    if delivery is None:
        return None  # delivered, failed, or deleted with its webhook
    hook, body = delivery.webhook, body_of(delivery.event)
    stamp = int(time.time())
    request = urllib.request.Request(hook.url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "flywheel-webhooks/1",
        "X-Flywheel-Event": delivery.event.type, "X-Flywheel-Delivery": str(delivery.pk),
        "X-Flywheel-Signature": signature(hook.secret, stamp, body),
    })
    status, error, wait_hint, refused = None, "", 0.0, False
    try:
        with egress.opener().open(request, timeout=settings.WEBHOOK_TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as answer:
        status, error = answer.code, f"HTTP {answer.code}: {answer.read(300).decode('utf-8', 'replace')}"
        wait_hint = _retry_after(answer.headers.get("Retry-After"))
    except (urllib.error.URLError, OSError, ValueError) as failure:
        reason = getattr(failure, "reason", failure)
        refused = isinstance(reason, egress.Refused)
        error = f"refused: {reason}" if refused else f"{type(failure).__name__}: {reason}"
    attempts = delivery.attempts + 1
    now = timezone.now()
    fields = {"attempts": attempts, "last_status": status, "last_error": error[:2000]}
    retry_in = None
    if status is not None and 200 <= status < 300:
        fields.update(state=WebhookDelivery.State.DELIVERED, delivered_at=now, last_error="", next_attempt_at=None)
    elif (not refused and (status is None or status >= 500 or status in _RETRIED_STATUSES)
          and attempts < settings.WEBHOOK_MAX_ATTEMPTS):
        retry_in = max(settings.WEBHOOK_BACKOFF_S * 2 ** (attempts - 1), min(wait_hint, 3600.0))
        fields.update(next_attempt_at=now + timedelta(seconds=retry_in))
    else:
        fields.update(state=WebhookDelivery.State.FAILED, next_attempt_at=None)
    WebhookDelivery.objects.filter(pk=delivery.pk, state=WebhookDelivery.State.PENDING).update(**fields)
    return retry_in


def webhooks_resume(*, now=None) -> int:
    """Queue every pending delivery whose next attempt is due (after a broker outage or a worker's
    restart lost its queued retry); returns how many."""
    now = now or timezone.now()
    # Two minutes overdue: a retry queued with its countdown is not sent twice when it runs on time.
    due = list(WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING,
                                              next_attempt_at__lte=now - timedelta(minutes=2))
               .values_list("pk", flat=True)[:1000])
    for pk in due:
        _enqueue(pk)
    return len(due)


# The live stream.

def events_after(*, project: Project, after: int, limit: int = 100) -> list[Event]:
    return list(Event.objects.filter(project=project, pk__gt=after).order_by("pk")[:limit])


def last_vote_id(project: Project) -> int:
    last = Vote.objects.filter(comparison__project=project).order_by("-pk").values_list("pk", flat=True).first()
    return last or 0


def votes_since(project: Project, after: int) -> tuple[int, int]:
    """How many votes of the project have an id above ``after``, and the highest id (``after`` if none)."""
    new = Vote.objects.filter(comparison__project=project, pk__gt=after).aggregate(n=Count("pk"), last=Max("pk"))
    return new["n"], new["last"] or after
