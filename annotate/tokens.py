"""Bearer tokens for the JSON API. Only a hash is stored; the token is shown once.

Every API call starts with the token, so the lookup is one plain SQL statement that
can also bring what the two annotation calls need next (the project and the caller's
role in it, and whether they hold a lease): the ORM and raw querysets spent more CPU
building these than the database spent answering.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC
from functools import cache

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from annotate import sql
from annotate.models import ApiToken, Project

PREFIX = "fw_"
# The user's columns a request needs; any other field loads on first access.
_USER_FIELDS = ("id", "username", "is_active", "is_staff", "is_superuser")
# The project's columns the queue and the vote need.
_PROJECT_FIELDS = ("id", "slug", "votes_per_comparison", "retrain_threshold", "lease_seconds", "gold_rate", "gold_count")


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_create(*, user, name: str = "") -> str:
    raw = PREFIX + secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, name=name, key_hash=_hash(raw))
    return raw


@dataclass(frozen=True)
class Caller:
    """Who is calling, and what the URL names: the project (by slug, or the comparison's) and
    the caller's membership role in it (None for outsiders)."""

    user: object
    project: Project | None = None
    role: str | None = None
    comparison_exists: bool = False
    # A live, unskipped lease in any project (on another comparison than the one voted on);
    # None: not asked (PostgreSQL, where the queue's function looks for it in the same call).
    holds_lease: bool | None = True

    def may_annotate(self) -> bool:
        return self.project is not None and (self.user.is_staff or self.role is not None)


def _probes_lease() -> bool:
    # On PostgreSQL annotate_claim_fast looks for a held lease itself, with the index; here the probe
    # would be planned against a lease table that is mostly dead rows between two autovacuum runs,
    # and a sequential scan over them on every request cost more than the round trip it saves.
    return connection.vendor != "postgresql"


@cache
def _sql(scope: str) -> str:
    User = get_user_model()
    cols = [f"u.{User._meta.get_field(name).column}" for name in _USER_FIELDS] + ["t.id", "t.last_used_at"]
    joins = ""
    if scope:
        cols += [f"p.{Project._meta.get_field(name).column}" for name in _PROJECT_FIELDS] + ["m.role"]
        held = ("EXISTS (SELECT 1 FROM annotate_lease l WHERE l.annotator_id = u.id AND l.expires_at > %s"
                " AND l.skipped = %s{})")
        if not _probes_lease():
            held = "NULL"
        if scope == "project":
            cols += [held.format("")]
            joins = " LEFT JOIN annotate_project p ON p.slug = %s"
        else:
            cols += ["c.id", held.format(" AND l.comparison_id <> c.id")]
            joins = (" LEFT JOIN annotate_comparison c ON c.id = %s"
                     " LEFT JOIN annotate_project p ON p.id = c.project_id")
        joins += " LEFT JOIN annotate_membership m ON m.project_id = p.id AND m.user_id = u.id"
    return (
        f"SELECT {', '.join(cols)} FROM {User._meta.db_table} u"
        f" JOIN annotate_apitoken t ON t.user_id = u.{User._meta.pk.column}{joins} WHERE t.key_hash = %s"
    )


def caller_for_token(raw: str, *, slug: str | None = None, comparison_id: int | None = None) -> Caller | None:
    """The active user owning this token, or None; with ``slug`` or ``comparison_id``, also that
    project and the user's role in it, read in the same statement."""
    if not raw.startswith(PREFIX):
        return None
    now = timezone.now()
    scope = "project" if slug is not None else "comparison" if comparison_id is not None else ""
    params: list = [now, False] if scope and _probes_lease() else []
    params += [slug] if scope == "project" else [comparison_id] if scope else []
    row = sql.row(_sql(scope), [*params, _hash(raw)])
    if row is None or not row[2]:  # no such token, or the user is inactive
        return None
    n = len(_USER_FIELDS)
    user = get_user_model().from_db(connection.alias, _USER_FIELDS, row[:n])
    token_id, used = row[n], row[n + 1]
    if used is not None and timezone.is_naive(used):  # SQLite returns naive UTC from raw SQL
        used = used.replace(tzinfo=UTC)
    # Touch at most once a minute: a write on every API call would double the vote path's cost.
    if used is None or (now - used).total_seconds() > 60:
        ApiToken.objects.filter(pk=token_id).update(last_used_at=now)
    if not scope:
        return Caller(user=user)
    rest = row[n + 2 :]
    k = len(_PROJECT_FIELDS)
    project = None if rest[0] is None else Project.from_db(connection.alias, _PROJECT_FIELDS, rest[:k])
    role = rest[k]
    held = rest[-1] if _probes_lease() else None
    if scope == "project":
        return Caller(user=user, project=project, role=role, holds_lease=None if held is None else bool(held))
    return Caller(user=user, project=project, role=role, comparison_exists=rest[k + 1] is not None,
                  holds_lease=None if held is None else bool(held))


def user_for_token(raw: str):
    """The active user owning this token, or None."""
    caller = caller_for_token(raw)
    return None if caller is None else caller.user
