"""The deployment kit: production settings pass Django's deploy checks, and the compose file holds together."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def production_env(var: Path) -> dict[str, str]:
    """deploy/production.env.example as an environment, its secret filled in."""
    env = {}
    for line in (ROOT / "deploy" / "production.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    env["SECRET_KEY"] = secrets.token_urlsafe(50)
    env["DATABASE_URL"] = f"sqlite:///{var / 'check.sqlite3'}"  # the checks need no database server
    env["FLYWHEEL_VAR_DIR"] = str(var)
    return env


def test_check_deploy_is_clean_under_the_documented_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    env.update(production_env(tmp_path))
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_the_defaults_are_what_check_deploy_warns_about(tmp_path):
    # The embedded defaults are for a laptop: the deploy check must keep flagging them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_") and k != "SECRET_KEY"}
    env["FLYWHEEL_VAR_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    for warning in ("W004", "W008", "W009", "W012", "W016"):
        assert warning in done.stdout + done.stderr, warning
