"""The Content-Security-Policy header on the site's pages: scripts, styles and everything else from this
origin only; no inline script or style, no plugins, no framing, forms post only here. Model outputs
are untrusted text: should one ever slip through escaping, the browser still runs nothing it carries."""
from __future__ import annotations

from django.conf import settings


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = settings.CONTENT_SECURITY_POLICY
        return response
