"""Fixtures shared by the annotate tests."""
from __future__ import annotations

import json

import pytest

from annotate.tokens import token_create


@pytest.fixture
def api(client, annotator):
    """Call the JSON API as the annotator: api(method, url, body=None) with a bearer token."""
    token = token_create(user=annotator)

    def call(method, url, body=None):
        kwargs = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        if body is not None:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        return getattr(client, method)(url, **kwargs)

    return call
