"""Throttling: failed sign-ins per account and per address, API calls per token; 429 with Retry-After."""
from __future__ import annotations

import json

import pytest
from django.urls import reverse

from annotate.models import Vote
from annotate.tokens import token_create
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _sign_in(client, username: str, password: str, *, address: str = "10.0.0.1", admin: bool = False):
    url = reverse("admin:login") if admin else reverse("login")
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_an_account_with_too_many_failed_sign_ins_is_refused_even_the_right_password(client, manager, annotator,
                                                                                     settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 5
    for _ in range(5):
        assert _sign_in(client, "manager", "wrong-guess").status_code == 200
    refused = _sign_in(client, "Manager", PASSWORD)  # any case, and the right password too
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 15 * 60
    assert "too many failed sign-ins" in refused.content.decode()
    assert _sign_in(client, "manager", PASSWORD, admin=True).status_code == 429  # the admin's page counts the same
    assert _sign_in(client, "annotator", PASSWORD).status_code == 302  # another account from that address


def test_an_address_with_too_many_failed_sign_ins_is_refused_for_every_account(client, manager, settings):
    settings.LOGIN_FAILURES_PER_ADDRESS = 8
    for i in range(8):
        assert _sign_in(client, f"guess{i}", "nope-nope", address="10.9.9.9").status_code == 200
    assert _sign_in(client, "manager", PASSWORD, address="10.9.9.9").status_code == 429
    assert _sign_in(client, "manager", PASSWORD, address="10.1.1.1").status_code == 302  # from elsewhere


def test_a_successful_sign_in_clears_its_account_s_failures(client, manager, settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 3
    for _ in range(2):
        _sign_in(client, "manager", "wrong-guess")
    assert _sign_in(client, "manager", PASSWORD).status_code == 302
    client.logout()
    for _ in range(2):
        assert _sign_in(client, "manager", "wrong-guess").status_code == 200
    assert _sign_in(client, "manager", PASSWORD).status_code == 302


def test_a_token_over_its_api_rate_gets_a_json_429_and_stores_nothing(client, annotator, manager, comparisons,
                                                                     settings):
    settings.API_REQUESTS_PER_MINUTE = 3
    busy = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator, name='busy')}"}
    for _ in range(3):
        assert client.get("/api/projects", **busy).status_code == 200
    vote = client.post(f"/api/comparisons/{comparisons[0].pk}/vote", json.dumps({"choice": "a"}),
                       content_type="application/json", **busy)
    assert vote.status_code == 429 and 0 < int(vote["Retry-After"]) <= 60
    assert "more than 3 API calls this minute (API_REQUESTS_PER_MINUTE)" in vote.json()["error"]
    assert not Vote.objects.exists()
    other = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager, name='other')}"}
    assert client.get("/api/projects", **other).status_code == 200  # per token
    settings.API_REQUESTS_PER_MINUTE = 0  # off
    assert client.get("/api/projects", **busy).status_code == 200


def test_behind_the_proxy_the_address_is_the_one_it_appended(client, manager, settings):
    settings.LOGIN_FAILURES_PER_ADDRESS = 3
    settings.BEHIND_TLS_PROXY = True
    url = reverse("login")
    for i in range(3):  # a client that writes its own X-Forwarded-For first does not escape: the proxy's entry counts
        client.post(url, {"username": f"g{i}", "password": "nope-nope"}, REMOTE_ADDR="10.0.0.9",
                    HTTP_X_FORWARDED_FOR=f"1.2.3.{i}, 203.0.113.7")
    refused = client.post(url, {"username": "manager", "password": PASSWORD}, REMOTE_ADDR="10.0.0.9",
                          HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert refused.status_code == 429
    other = client.post(url, {"username": "manager", "password": PASSWORD}, REMOTE_ADDR="10.0.0.9",
                        HTTP_X_FORWARDED_FOR="198.51.100.4")
    assert other.status_code == 302  # same proxy, another client
