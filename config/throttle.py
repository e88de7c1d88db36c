"""Throttling: failed sign-ins per account and per address, API calls per token; 429 with Retry-After.

Counters live in Django's cache (``CACHE_URL``: Redis for a server with several worker processes or
hosts, else each process's memory) in fixed windows. Failed sign-ins are counted after the fact (the
sign-in page answered with its form again); once an account or an address reached its limit, every
sign-in attempt for it is refused until the window ends, the right password included, so guessing
gains nothing. A successful sign-in clears its account's count.
"""
from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse
from django.urls import reverse

LOGIN_WINDOW_S = 15 * 60
API_WINDOW_S = 60


def _key(kind: str, ident: str, window_s: int) -> tuple[str, int]:
    """The counter's cache key for the current window, and the seconds left in it."""
    now = time.time()
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"throttle:{kind}:{digest}:{int(now // window_s)}", max(1, int(window_s - now % window_s))


def _count(key: str) -> int:
    return cache.get(key, 0)


def _bump(key: str, window_s: int) -> int:
    cache.add(key, 0, timeout=window_s + 5)
    try:
        return cache.incr(key)
    except ValueError:  # evicted between add and incr
        cache.set(key, 1, timeout=window_s + 5)
        return 1


def too_many(status_text: str, retry_after: int, *, json: bool) -> HttpResponse:
    if json:
        from django.http import JsonResponse

        response = JsonResponse({"error": status_text}, status=429)
    else:
        response = HttpResponse(status_text, status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(retry_after)
    return response


def api_call_allowed(token: str) -> HttpResponse | None:
    """Count one API call for ``token``; a 429 response once it is over ``API_REQUESTS_PER_MINUTE``."""
    limit = settings.API_REQUESTS_PER_MINUTE
    if not limit:
        return None
    key, left = _key("api", token, API_WINDOW_S)
    if _bump(key, API_WINDOW_S) > limit:
        return too_many(f"this token made more than {limit} API calls this minute (API_REQUESTS_PER_MINUTE); "
                        f"try again in {left} s", left, json=True)
    return None


def client_address(request) -> str:
    """Who is calling: the connection's address, or behind the trusted proxy (``BEHIND_TLS_PROXY``) the one
    it appended to ``X-Forwarded-For`` (the last entry: anything before it the client could have written)."""
    if settings.BEHIND_TLS_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip()
        if forwarded:
            return forwarded
    return request.META.get("REMOTE_ADDR") or ""


class LoginThrottleMiddleware:
    """Refuse sign-ins (the site's and the admin's) for an account or an address with too many recent failures."""

    def __init__(self, get_response):
        self.get_response = get_response
        self._paths: set[str] | None = None

    def __call__(self, request):
        if self._paths is None:
            self._paths = {reverse("login"), reverse("admin:login")}
        if request.method != "POST" or request.path not in self._paths:
            return self.get_response(request)
        account = "account:" + request.POST.get("username", "").strip().lower()[:150]
        address = "address:" + client_address(request)
        limits = ((account, settings.LOGIN_FAILURES_PER_ACCOUNT), (address, settings.LOGIN_FAILURES_PER_ADDRESS))
        keys = [(_key("login", ident, LOGIN_WINDOW_S), limit) for ident, limit in limits]
        for (key, left), limit in keys:
            if limit and _count(key) >= limit:
                return too_many(f"too many failed sign-ins from this account or address; try again in {left // 60 + 1}"
                                " minutes", left, json=False)
        response = self.get_response(request)
        if response.status_code == 200:  # the form again: a failed sign-in
            for (key, _), _limit in keys:
                _bump(key, LOGIN_WINDOW_S)
        elif response.status_code in (301, 302, 303):  # signed in
            cache.delete(keys[0][0][0])
        return response
