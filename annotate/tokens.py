"""Bearer tokens for the JSON API. Only a hash is stored; the token is shown once."""
from __future__ import annotations

import hashlib
import secrets
from datetime import UTC

from django.contrib.auth import get_user_model
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
    User = get_user_model()
    # Every API call starts here, so the user and the token come back in one raw query (a raw
    # queryset still builds a complete User); select_related cost several times the CPU here.
    sql = (
        f"SELECT u.*, t.id AS token_id, t.last_used_at AS token_used_at FROM {User._meta.db_table} u"
        f" JOIN annotate_apitoken t ON t.user_id = u.{User._meta.pk.column} WHERE t.key_hash = %s"
    )
    user = next(iter(User.objects.raw(sql, (_hash(raw),))), None)
    if user is None or not user.is_active:
        return None
    now = timezone.now()
    used = user.token_used_at
    if used is not None and timezone.is_naive(used):  # SQLite returns naive UTC from raw SQL
        used = used.replace(tzinfo=UTC)
    # Touch at most once a minute: a write on every API call would double the vote path's cost.
    if used is None or (now - used).total_seconds() > 60:
        ApiToken.objects.filter(pk=user.token_id).update(last_used_at=now)
    return user
