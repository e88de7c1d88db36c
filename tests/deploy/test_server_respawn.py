"""The production server keeps serving when one of its worker processes dies: the Dockerfile's own
command (granian, 2 workers, --respawn-failed-workers) on this test's database, annotators voting
through a SIGKILL of a worker, every vote stored once."""
from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from annotate.models import Vote
from annotate.tokens import token_create
from tests.conftest import make_comparisons
from tests.training.test_worker import database_url

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(180), pytest.mark.django_db(transaction=True)]


def dockerfile_command(port: int) -> list[str]:
    """The web image's CMD, listening on 127.0.0.1:``port`` instead of 0.0.0.0:8000."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    command = ast.literal_eval(re.search(r"^CMD (\[.*\])", text, re.M).group(1))
    command[command.index("--host") + 1], command[command.index("--port") + 1] = "127.0.0.1", str(port)
    return [sys.executable, "-m", *command]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _vote(port: int, token: str, comparison_id: int, key: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/comparisons/{comparison_id}/vote", method="POST",
        data=json.dumps({"choice": "a", "idempotency_key": key}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def test_the_server_command_keeps_serving_when_a_worker_is_killed(project, annotator, tmp_path):
    comparisons = make_comparisons(project, 60)
    token = token_create(user=annotator, name="respawn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": database_url(), "DEBUG": "0", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "granian.log", "w")
    server = subprocess.Popen(dockerfile_command(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # its own process group: stopped whole, workers included
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_children(server.pid)) < 2:
            time.sleep(0.2)
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        workers = _children(server.pid)
        assert len(workers) == 2, (tmp_path / "granian.log").read_text()[-2000:]
        failing_since, longest_outage, killed = None, 0.0, None
        for i, comparison in enumerate(comparisons):
            if i == 20:
                os.kill(workers[0], signal.SIGKILL)  # one worker process dies mid-traffic
                killed = time.monotonic()
            while True:  # a client that retries, with the same idempotency key, until its vote is acknowledged
                try:
                    status = _vote(port, token, comparison.pk, f"respawn-{comparison.pk}")
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    failing_since = failing_since or time.monotonic()
                    assert server.poll() is None, "the whole server stopped: " + (tmp_path / "granian.log").read_text()
                    assert time.monotonic() - (killed or 0) < 30
                    time.sleep(0.05)
            if failing_since is not None:
                longest_outage = max(longest_outage, time.monotonic() - failing_since)
                failing_since = None
            assert status == 201
        assert server.poll() is None  # still serving
        assert len(_children(server.pid)) == 2 and workers[0] not in _children(server.pid)  # a new one took its place
        assert longest_outage < 2.0  # requests failed for at most a moment
        assert Vote.objects.filter(annotator=annotator).count() == len(comparisons)  # every vote once
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # a worker that outlived its server (never leave one on the database)
        server.wait()
        log.close()
