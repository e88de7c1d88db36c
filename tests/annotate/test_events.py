"""Webhooks and the live feed, against a real HTTP receiver on 127.0.0.1 (and a real Celery worker)."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.urls import reverse

from annotate import events, services, snapshots
from annotate.models import Event, Membership, Webhook, WebhookDelivery
from annotate.tokens import token_create
from annotate.votes import vote_record
from tests.conftest import PASSWORD, make_comparisons


class Receiver:
    """An HTTP server that records every POST and answers with the next status of ``answers`` (then 200)."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.seen: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.seen.append({"headers": dict(self.headers), "body": body, "at": time.monotonic()})
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(answers=()):
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def eager(settings):
    """Celery tasks run where they are sent (the retries' countdowns are not waited for)."""
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    settings.WEBHOOK_BACKOFF_S = 0.01
    yield
    app.conf.task_always_eager = before


def _verify(secret: str, seen: dict) -> dict:
    """What a receiver does: check the signature over "t.body", then read the body."""
    fields = dict(part.split("=", 1) for part in seen["headers"]["X-Flywheel-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + seen["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    assert abs(int(fields["t"]) - time.time()) < 60
    return json.loads(seen["body"])


def test_a_frozen_snapshot_reaches_the_receiver_signed(project, annotator, comparisons, receiver, eager, tmp_path,
                                                       settings, django_capture_on_commit_callbacks):
    settings.ARTIFACTS_DIR = tmp_path
    target = receiver()
    hook = events.webhook_create(project=project, url=target.url, events=["snapshot.frozen"])
    vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a")
    with django_capture_on_commit_callbacks(execute=True):
        snapshot = snapshots.snapshot_freeze(project=project)
    assert len(target.seen) == 1  # snapshot.frozen only: the vote was not subscribed to
    body = _verify(hook.secret, target.seen[0])
    assert body["type"] == "snapshot.frozen" and body["project"] == "demo"
    assert body["data"]["snapshot"] == snapshot.pk and body["data"]["sha256"] == snapshot.sha256
    assert target.seen[0]["headers"]["X-Flywheel-Event"] == "snapshot.frozen"
    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    assert target.seen[0]["headers"]["X-Flywheel-Delivery"] == str(delivery.pk)


def test_a_receiver_that_fails_is_tried_again_and_a_refusal_is_final(project, receiver, eager, settings,
                                                                     django_capture_on_commit_callbacks):
    flaky, refusing = receiver([503, 500]), receiver([400])
    events.webhook_create(project=project, url=flaky.url)
    events.webhook_create(project=project, url=refusing.url)
    with django_capture_on_commit_callbacks(execute=True):
        events.event_emit(project_id=project.pk, type="checkpoint.published", data={"checkpoint": 7})
    assert len(flaky.seen) == 3 and len(refusing.seen) == 1
    assert flaky.seen[0]["body"] == flaky.seen[2]["body"]  # the same event each time
    by_url = {d.webhook.url: d for d in WebhookDelivery.objects.select_related("webhook")}
    assert (by_url[flaky.url].state, by_url[flaky.url].attempts) == ("delivered", 3)
    assert (by_url[refusing.url].state, by_url[refusing.url].attempts, by_url[refusing.url].last_status) == (
        "failed", 1, 400)


def test_an_unreachable_receiver_fails_after_the_last_attempt(project, eager, settings,
                                                              django_capture_on_commit_callbacks):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    events.webhook_create(project=project, url="http://127.0.0.1:9/closed")
    with django_capture_on_commit_callbacks(execute=True):
        events.event_emit(project_id=project.pk, type="snapshot.frozen", data={})
    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 3, None)
    assert "Connection refused" in delivery.last_error or "URLError" in delivery.last_error


def test_votes_are_events_only_while_a_webhook_wants_them_and_name_no_annotator(
        project, annotator, comparisons, receiver, eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a")
    assert not Event.objects.exists()  # nobody listens: nothing written on the vote path
    target = receiver()
    hook = events.webhook_create(project=project, url=target.url, events=["vote.recorded"])
    with django_capture_on_commit_callbacks(execute=True):
        vote = vote_record(annotator=annotator, comparison_id=comparisons[1].pk, choice="b", strength=2).vote
    body = _verify(hook.secret, target.seen[0])
    assert body["type"] == "vote.recorded"
    assert body["data"] | {"at": None} == {"vote": vote.pk, "comparison": comparisons[1].pk, "choice": "b",
                                           "strength": 2, "source": "human", "at": None}
    assert "annotator" not in target.seen[0]["body"].decode()


def test_run_states_and_promotions_are_events(project, django_capture_on_commit_callbacks):
    from training.runs import run_cancel, run_create

    with django_capture_on_commit_callbacks(execute=True):
        run = run_create(project=project, kind="reward_model", enqueue=False)
        run_cancel(run=run)
    states = [e.data["state"] for e in Event.objects.filter(type="run.state_changed").order_by("pk")]
    assert states == ["queued", "cancelled"]
    assert all(e.data["run"] == run.pk for e in Event.objects.all())


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_with_backoff(celery_broker, receiver, tmp_path):
    from config.celery import app
    from tests.training.test_worker import ROOT, database_url

    project = services.project_create(slug="hooks", name="Hooks")
    target = receiver([503])
    events.webhook_create(project=project, url=target.url)
    app.control.purge()
    env = {**os.environ, **celery_broker, "DATABASE_URL": database_url(), "WEBHOOK_BACKOFF_S": "2",
           "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "--pool",
                               "solo", "--loglevel", "INFO", "--without-heartbeat", "--without-gossip",
                               "--without-mingle"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        events.event_emit(project_id=project.pk, type="snapshot.frozen", data={"snapshot": 1})  # autocommit: now
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(target.seen) < 2:
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
    assert len(target.seen) == 2, (tmp_path / "worker.log").read_text()[-2000:]
    assert target.seen[1]["at"] - target.seen[0]["at"] >= 1.9  # the backoff, waited by the broker's countdown
    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("delivered", 2)


def _frames(response) -> list[tuple[str | None, str, dict]]:
    """(id, event, data) of each server-sent event in a finished stream."""
    text = b"".join(response.streaming_content).decode()
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return out


def test_the_live_stream_sends_stored_events_and_vote_counts_and_resumes(client, project, annotator, comparisons,
                                                                         settings, monkeypatch,
                                                                         django_capture_on_commit_callbacks):
    from annotate import views_events

    settings.EVENTS_STREAM_SECONDS = 1
    monkeypatch.setattr(views_events, "POLL_S", 0.05)
    token = token_create(user=annotator)
    url = reverse("api-events", args=[project.slug])
    with django_capture_on_commit_callbacks(execute=True):
        events.event_emit(project_id=project.pk, type="snapshot.frozen", data={"snapshot": 1})
        events.event_emit(project_id=project.pk, type="checkpoint.published", data={"checkpoint": 2})
    first, second = Event.objects.order_by("pk")

    def stream(**headers):
        response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}", **headers)
        assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
        return response

    seen = _frames(stream())
    assert [(i, e) for i, e, _ in seen] == [(str(first.pk), "snapshot.frozen"), (str(second.pk), "checkpoint.published")]
    assert seen[1][2]["data"] == {"checkpoint": 2}
    # A reconnect with Last-Event-ID gets only what came after.
    assert [e for _, e, _ in _frames(stream(HTTP_LAST_EVENT_ID=str(first.pk)))] == ["checkpoint.published"]

    # Votes arriving while the stream is open show as counts (nothing stored per vote).
    response = stream(HTTP_LAST_EVENT_ID=str(second.pk))
    frames = iter(response.streaming_content)
    next(frames)  # retry:
    vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a")
    rest = b"".join(frames).decode()
    assert "event: votes.progress" in rest and '"new_votes": 1' in rest


def test_the_stream_is_for_members_only(client, project, outsider):
    url = reverse("api-events", args=[project.slug])
    assert client.get(url).status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {token_create(user=outsider)}").status_code == 404
    client.force_login(outsider)
    assert client.get(reverse("events-stream", args=[project.slug])).status_code == 404


def test_managers_add_webhooks_and_see_the_delivery_log(client, project, manager, annotator, receiver, eager,
                                                         django_capture_on_commit_callbacks):
    page = reverse("manage-webhooks", args=[project.slug])
    client.force_login(annotator)
    assert client.get(page).status_code == 403
    client.force_login(manager)
    for bad, message in [("javascript:alert(1)", "must be an http:// or https:// URL"),
                         ("ftp://example.org/x", "must be an http:// or https:// URL"),
                         ("https://" + "a" * 600 + ".org", "at most 500 characters")]:
        response = client.post(page, {"action": "create", "url": bad})
        assert response.status_code == 400 and message in response.content.decode()
    response = client.post(page, {"action": "create", "url": "https://x.org/h", "events": ["no.such"]})
    assert response.status_code == 400 and "unknown event types" in response.content.decode()
    assert not Webhook.objects.exists()

    target = receiver([400])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(page, {"action": "create", "url": target.url, "events": ["snapshot.frozen"]})
        events.event_emit(project_id=project.pk, type="snapshot.frozen", data={})
    html = client.get(page).content.decode()
    delivery = WebhookDelivery.objects.get()
    assert f'data-delivery="{delivery.pk}"' in html and "HTTP 400" in html and "Failed" in html
    with django_capture_on_commit_callbacks(execute=True):
        client.post(page, {"action": "redeliver", "delivery": delivery.pk})
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, len(target.seen)) == ("delivered", 1, 2)
    assert client.post(page, {"action": "delete", "webhook": "abc"}).status_code == 400


def test_a_member_of_another_project_cannot_touch_these_webhooks(client, project):
    other = services.project_create(slug="other", name="Other")
    boss = services.user_with_role(project=other, username="boss", password=PASSWORD, role=Membership.Role.MANAGER)
    hook = events.webhook_create(project=project, url="https://x.org/h")
    client.force_login(boss)
    assert client.post(reverse("manage-webhooks", args=[project.slug]),
                       {"action": "delete", "webhook": hook.pk}).status_code == 404
    assert client.post(reverse("manage-webhooks", args=[other.slug]),
                       {"action": "delete", "webhook": hook.pk}).status_code == 400
    assert Webhook.objects.filter(pk=hook.pk).exists()
    make_comparisons(other, 1)
