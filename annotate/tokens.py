"""Bearer tokens for the JSON API. Only a hash is stored; the token is shown once."""
from __future__ import annotations

import hashlib
import secrets

from django.utils import timezone

from annotate.models import ApiToken

PREFIX = "fw_"


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_create(*, user, name: str = "") -> str:
    raw = PREFIX + secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, name=name, key_hash=_hash(raw))
    return raw


def user_for_token(raw: str):
    """The active user owning this token, or None."""
    if not raw.startswith(PREFIX):
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=_hash(raw)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    # Touch at most once a minute: a write on every API call would double the vote path's cost.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
