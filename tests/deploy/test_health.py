"""GET /healthz: database and broker reachable, as JSON, without a login and without secrets."""
from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_healthy_when_the_database_and_the_broker_answer(client):
    response = client.get(reverse("healthz"))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    body = response.json()
    assert (body["status"], body["database"], body["broker"]) == ("ok", "ok", "ok")
    assert response["Cache-Control"] == "no-store"


def test_an_unreachable_broker_is_a_503_that_names_it_and_nothing_more(client, settings):
    from config.celery import app

    closed = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1
    # Celery resolves broker_write_url from broker_url when the app is finalized (the Redis pass
    # of .ci/run has it set), and producers use the write URL: point both at the closed port.
    previous = app.conf.broker_url, app.conf.broker_write_url
    app.conf.broker_url = app.conf.broker_write_url = closed
    try:
        response = client.get(reverse("healthz"))
    finally:
        app.conf.broker_url, app.conf.broker_write_url = previous
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database"], body["broker"]) == ("unavailable", "ok", "unreachable")
    assert "hunter2" not in response.content.decode() and "127.0.0.1" not in response.content.decode()


def test_an_unreachable_database_is_a_503(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise connection.OperationalError("connection refused (password=hunter2)")

    monkeypatch.setattr(connection, "cursor", refuse)
    response = client.get(reverse("healthz"))
    assert response.status_code == 503 and response.json()["database"] == "unreachable"
    assert "hunter2" not in response.content.decode()


def test_health_needs_no_login_and_only_answers_get(client):
    assert client.get("/healthz").status_code == 200  # anonymous
    assert client.post("/healthz").status_code == 405
