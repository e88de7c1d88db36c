"""Django's PostgreSQL backend, with the connection health check at most once a second.

With ``CONN_HEALTH_CHECKS`` Django sends ``SELECT 1`` before the first query of every
request on a reused connection. On the annotation hot path that was one round trip in five
(about 5% of a worker's CPU and as many extra statements for PostgreSQL). A connection that
answered a check less than ``CHECK_EVERY`` seconds ago is taken as alive: what the check is
for, a connection that died while idle (a server restart, a proxy's idle timeout), is still
caught, and a connection that breaks within that second fails one request, after which Django
closes it (its errors make ``close_if_unusable_or_obsolete`` test and drop it).
"""
from __future__ import annotations

import time

from django.db.backends.postgresql import base

CHECK_EVERY = 1.0


class DatabaseWrapper(base.DatabaseWrapper):
    checked_at = float("-inf")  # time.monotonic() of the last check this connection passed

    def close_if_health_check_failed(self) -> None:
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        now = time.monotonic()
        if now - self.checked_at < CHECK_EVERY:
            self.health_check_done = True
            return
        super().close_if_health_check_failed()
        self.checked_at = now if self.connection is not None else float("-inf")
