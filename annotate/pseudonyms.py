"""Annotator pseudonyms: what an export or the API shows instead of a username.

A pseudonym is ``"anon-"`` + the first 16 hex digits (64 bits) of HMAC-SHA256(key, username).
The key is derived from ``settings.EXPORT_PSEUDONYM_KEY`` when a deployment sets one, else from
``SECRET_KEY``, so pseudonyms are stable across exports of one deployment and cannot be
reversed (or recomputed from a list of guessed usernames) without the key. Changing the key
changes every pseudonym.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from django.conf import settings

PREFIX = "anon-"
DIGITS = 16
CONTEXT = b"annotate.pseudonyms.v1"  # a key of its own, never the raw SECRET_KEY


def pseudonym_key() -> bytes:
    secret = getattr(settings, "EXPORT_PSEUDONYM_KEY", "") or settings.SECRET_KEY
    return hmac.new(secret.encode(), CONTEXT, hashlib.sha256).digest()


def pseudonym(username: str, *, key: bytes | None = None) -> str:
    digest = hmac.new(key or pseudonym_key(), username.encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:DIGITS]


def annotator_names(*, real_names: bool = False) -> Callable[[str], str]:
    """A function from username to what leaves the app: the pseudonym, or the username when
    ``real_names`` (an explicit opt-in). Memoised for one export, keyed once."""
    if real_names:
        return str
    key, seen = pseudonym_key(), {}

    def name(username: str) -> str:
        if username not in seen:
            seen[username] = pseudonym(username, key=key)
        return seen[username]

    return name
