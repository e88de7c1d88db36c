"""The site's pages carry a Content-Security-Policy that allows no inline script or style (the browser
tests fail on any violation the pages cause); the markup the server writes has no style attribute."""
from __future__ import annotations

import re

from django.urls import reverse


def test_pages_carry_a_policy_without_inline_script_or_style(client, manager, project, comparisons):
    client.force_login(manager)
    for url in ("/login/", reverse("console-dashboard", args=[project.slug]), f"/p/{project.slug}/compare/"):
        response = client.get(url)
        policy = response["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
        assert not re.search(r"\sstyle=", response.content.decode()), url  # progress bars and charts use classes
        assert not re.search(r"<script>(?!</script>)", response.content.decode()), url
