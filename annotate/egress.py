"""Where the app's own outgoing requests may go: webhooks reach public addresses only.

A webhook URL is typed by a manager, and the worker that POSTs to it sits inside the deployment's
network. Without a guard, a URL like ``http://169.254.169.254/latest/meta-data/`` (a cloud's
metadata endpoint), ``http://localhost:6379/`` or ``http://10.0.0.5/admin`` makes the worker call
an internal service on the manager's behalf (server-side request forgery), and the delivery log
shows them the answer. So an address that is not globally routable (private, loopback,
link-local, shared, reserved, multicast, site-local; an IPv6 address that carries an IPv4 one (mapped,
6to4, Teredo, NAT64, IPv4-compatible) is read as that IPv4 address) is
refused unless it lies in ``settings.WEBHOOK_ALLOWED_NETWORKS``, which a self-hosted team sets to
the networks its receivers live on.

The check runs twice: when a webhook is added (every address its host resolves to, so a manager
hears at once), and on every connection a delivery makes, against the address the socket actually
connected to. The second is what counts: DNS can answer differently later (rebinding), and a
redirect opens a new connection, which is checked the same way (and a redirect may only lead to
http(s): urllib would otherwise follow one to ftp:// through a connection nothing checks).
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from urllib.parse import urlsplit

from django.conf import settings

__all__ = ["Refused", "address_refusal", "host_refusal", "opener"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(OSError):
    """A connection to an address webhooks may not reach (never retried: the answer will not change)."""


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches through (mapped, 6to4, Teredo, NAT64,
    IPv4-compatible), else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if any(ip in network for network in _NAT64) or (int(ip) >> 32 == 0 and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str) -> str | None:
    """Why webhooks may not connect to ``address`` (a sentence), or None when they may."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is not part of it
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:  # fec0::/10: deprecated, yet routed inside some networks
            return _refusal(ip)
        ip = _embedded_ipv4(ip) or ip
    if ip.is_global and not ip.is_multicast:
        return None
    if any(ip in network for network in settings.WEBHOOK_ALLOWED_NETWORKS):
        return None
    return _refusal(ip)


def _refusal(ip: Address) -> str:
    return (f"{ip} is not a public address (private, loopback, link-local or reserved); webhooks reach "
            f"such an address only when it is in WEBHOOK_ALLOWED_NETWORKS")


def host_refusal(url: str) -> str | None:
    """Why ``url``'s host may not be called (the first address it resolves to that is refused), or None.

    A host that does not resolve now is not refused here: the delivery's own connection decides.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return None
    for info in infos:
        address = str(info[4][0])
        reason = address_refusal(address)
        if reason is not None:
            return reason if host.strip("[]") == address else f"{host} resolves to {reason}"
    return None


def _guarded_create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kwargs):
    sock = socket.create_connection(address, timeout, source_address, **kwargs)
    reason = address_refusal(str(sock.getpeername()[0]))
    if reason is not None:
        sock.close()
        raise Refused(reason)
    return sock


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Redirects stay on http(s): urllib would also follow one to ftp://, through a connection no guard checks."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise Refused(f"a redirect to {newurl[:80]!r}: webhooks follow http(s) redirects only")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener() -> urllib.request.OpenerDirector:
    """A urllib opener that speaks http(s) only and checks every connection (redirects included) by
    `address_refusal`.

    Built by hand: `build_opener` adds ftp, file and data handlers. Proxies from the environment are
    not used: a proxy would be the only address checked.
    """
    director = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler({}), urllib.request.UnknownHandler(), _HTTPHandler(),
                    _HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(), _RedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        director.add_handler(handler)
    return director
