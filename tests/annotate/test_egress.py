"""Webhooks never reach an internal address on a manager's say-so (server-side request forgery):
refused when added, and again at the connection a delivery actually makes (rebinding, redirects)."""
from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ImproperlyConfigured

from annotate import egress, events
from annotate.models import Webhook, WebhookDelivery
from annotate.services import InvalidInput
from config.settings import env_networks
from tests.annotate.test_events import Receiver, eager, receiver  # noqa: F401  (fixtures)

INTERNAL = ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
            "::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "fe80::1%eth0", "fc00::5", "224.0.0.1",
            # IPv6 forms that carry an internal IPv4 address: NAT64, 6to4, IPv4-compatible; and site-local
            "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::a9fe:a9fe", "fec0::1"]


@pytest.mark.parametrize("address", INTERNAL)
def test_addresses_that_are_not_public_are_refused(settings, address):
    settings.WEBHOOK_ALLOWED_NETWORKS = ()
    assert "WEBHOOK_ALLOWED_NETWORKS" in egress.address_refusal(address)


def test_public_addresses_pass_and_the_allowed_networks_let_a_private_one_in(settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = (ipaddress.ip_network("10.0.0.0/8"),)
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "10.9.9.9"):
        assert egress.address_refusal(address) is None, address
    assert egress.address_refusal("192.168.1.1") is not None


def test_adding_a_webhook_to_an_internal_host_is_refused_and_nothing_is_stored(project, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ()
    for url, named in (("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
                       ("http://localhost:6379/", "localhost resolves to"),
                       ("http://[::1]:8000/hook", "::1"), ("http://10.0.0.5/admin", "10.0.0.5")):
        with pytest.raises(InvalidInput, match="is refused") as refused:
            events.webhook_create(project=project, url=url)
        assert named in str(refused.value) and "WEBHOOK_ALLOWED_NETWORKS" in str(refused.value)
    assert not Webhook.objects.exists()


def test_the_page_says_why_a_webhook_is_refused(client, project, manager, settings):
    from django.urls import reverse

    from tests.conftest import PASSWORD

    settings.WEBHOOK_ALLOWED_NETWORKS = ()
    client.login(username=manager.username, password=PASSWORD)
    answer = client.post(reverse("manage-webhooks", args=[project.slug]),
                         {"action": "create", "url": "http://169.254.169.254/latest/meta-data/"})
    assert answer.status_code == 400
    assert "not a public address" in answer.content.decode() and not Webhook.objects.exists()


def test_a_delivery_checks_the_address_it_connects_to(project, receiver, eager, settings,  # noqa: F811
                                                      django_capture_on_commit_callbacks):
    """A host that was allowed (or resolved elsewhere) when added but connects to a refused address now:
    the delivery fails at once, never retried, and the receiver hears nothing."""
    target = receiver()
    events.webhook_create(project=project, url=target.url)  # 127.0.0.1/32 allowed (pytest.ini)
    settings.WEBHOOK_ALLOWED_NETWORKS = ()
    with django_capture_on_commit_callbacks(execute=True):
        events.event_emit(project_id=project.pk, type="snapshot.frozen", data={})
    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 1, None)
    assert delivery.last_error.startswith("refused: 127.0.0.1 is not a public address")
    assert target.seen == []


def _redirecting(location: str) -> ThreadingHTTPServer:
    """A receiver on 127.0.0.1 (allowed by pytest.ini) that answers every POST with a 302 to ``location``."""

    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_redirect_to_a_refused_address_is_not_followed(project, eager, settings,  # noqa: F811
                                                          django_capture_on_commit_callbacks):
    """The allowed receiver answers 302 to 127.0.0.2 (loopback, not allowed): that connection is refused."""
    hits: list[str] = []

    class Inner(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    inner = ThreadingHTTPServer(("127.0.0.2", 0), Inner)
    threading.Thread(target=inner.serve_forever, daemon=True).start()

    outer = _redirecting(f"http://127.0.0.2:{inner.server_address[1]}/secret")
    try:
        settings.WEBHOOK_ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.1/32"),)
        events.webhook_create(project=project, url=f"http://127.0.0.1:{outer.server_address[1]}/hook")
        with django_capture_on_commit_callbacks(execute=True):
            events.event_emit(project_id=project.pk, type="snapshot.frozen", data={})
        delivery = WebhookDelivery.objects.get()
        assert delivery.state == "failed" and delivery.last_error.startswith("refused: 127.0.0.2")
        assert hits == []
    finally:
        for server in (inner, outer):
            server.shutdown()
            server.server_close()


def test_a_redirect_to_another_scheme_is_refused_before_any_connection(project, eager, settings,  # noqa: F811
                                                                       django_capture_on_commit_callbacks):
    """urllib would follow a 302 to ftp:// through a connection no guard checks (a port scan, a banner in the log)."""
    listener = socket.create_server(("127.0.0.2", 0))
    listener.settimeout(0.5)

    outer = _redirecting(f"ftp://127.0.0.2:{listener.getsockname()[1]}/banner")
    try:
        events.webhook_create(project=project, url=f"http://127.0.0.1:{outer.server_address[1]}/hook")
        with django_capture_on_commit_callbacks(execute=True):
            events.event_emit(project_id=project.pk, type="snapshot.frozen", data={})
        delivery = WebhookDelivery.objects.get()
        assert (delivery.state, delivery.attempts) == ("failed", 1)
        assert delivery.last_error.startswith("refused: a redirect to 'ftp://127.0.0.2")
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected
    finally:
        outer.shutdown()
        outer.server_close()
        listener.close()


def test_the_setting_reads_networks_and_refuses_nonsense(monkeypatch):
    monkeypatch.setenv("WEBHOOK_ALLOWED_NETWORKS", " 10.0.0.0/8, 192.168.1.20 ,fd00::/8")
    assert [str(n) for n in env_networks("WEBHOOK_ALLOWED_NETWORKS")] == ["10.0.0.0/8", "192.168.1.20/32", "fd00::/8"]
    monkeypatch.setenv("WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8,intranet")
    with pytest.raises(ImproperlyConfigured, match="WEBHOOK_ALLOWED_NETWORKS='10.0.0.0/8,intranet' is not valid"):
        env_networks("WEBHOOK_ALLOWED_NETWORKS")
