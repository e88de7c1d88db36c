"""`make demo` end to end: what a new user gets after the two commands.

The same steps as the Makefile's demo target (migrate, load_demo, rundemo) in a
throwaway var folder, against the real gunicorn and Celery worker that rundemo
starts; then a new user logs in and votes twenty comparisons by keyboard alone,
and Ctrl-C stops everything cleanly.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from annotate.management.commands.load_demo import DEFAULT_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rundemo exited early with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def demo(tmp_path: Path):
    """The demo on its own SQLite file, broker and artifacts; yields (base URL, database path, process)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_BROKER_DIR", "ARTIFACTS_DIR")}
    env["FLYWHEEL_VAR_DIR"] = str(tmp_path)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    manage = [sys.executable, str(ROOT / "manage.py")]
    for step in (["migrate", "--no-input"], ["load_demo"]):
        subprocess.run([*manage, *step], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    port = _free_port()
    log = open(tmp_path / "rundemo.log", "w")  # noqa: SIM115 - closed in the teardown
    process = subprocess.Popen([*manage, "rundemo", "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/login/", process)
        yield base, tmp_path / "flywheel.sqlite3", process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_a_new_user_logs_in_and_votes_twenty_comparisons_by_keyboard(demo, page):
    base, database, process = demo
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", "annotator")
    page.fill("input[name=password]", DEFAULT_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    page.click("text=Start comparing")
    page.locator(".vote-form").wait_for()
    assert page.evaluate("getComputedStyle(document.body).marginTop") == "0px"  # app.css loaded (default: 8px)
    page.evaluate("window.__sameDocument = true")  # lost on a full page load
    seen = []
    for number in range(20):
        comparison_id = page.locator(".vote-form").get_attribute("data-comparison")
        seen.append(int(comparison_id))
        page.keyboard.press("123"[number % 3])
        page.wait_for_function(
            "id => { const f = document.querySelector('.vote-form'); return f && f.dataset.comparison !== id; }",
            arg=comparison_id,
        )
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("[data-votes-today]").inner_text() == "20"

    with sqlite3.connect(database) as db:
        stored = db.execute(
            "SELECT v.comparison_id, v.choice FROM annotate_vote v JOIN auth_user u ON u.id = v.annotator_id"
            " WHERE u.username = 'annotator' ORDER BY v.id"
        ).fetchall()
    assert stored == [(cid, ("a", "b", "tie")[n % 3]) for n, cid in enumerate(seen)]

    process.send_signal(signal.SIGINT)  # Ctrl-C
    assert process.wait(timeout=30) == 0
    assert "Stopped." in (database.parent / "rundemo.log").read_text()
