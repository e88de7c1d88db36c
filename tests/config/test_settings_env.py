"""Settings read from the environment: a value that cannot be read stops the start, naming the variable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import settings as settings_module

ROOT = Path(__file__).resolve().parents[2]
TYPED = ("DEBUG", "SECURE_COOKIES", "CELERY_TASK_ALWAYS_EAGER", "DB_SERVER_SIDE_BINDING", "IMPORT_MAX_BYTES",
         "UPLOAD_MAX_MEMORY_BYTES", "DB_CONN_MAX_AGE", "DB_PREPARE_THRESHOLD", "LOG_LEVEL", "DATABASE_URL")
POSTGRES = "postgres://flywheel:s3cret-pw@db.example:5432/flywheel"
SHOW = """
import json, django
django.setup()
from django.conf import settings as s
db = s.DATABASES["default"]
print(json.dumps({
    "DEBUG": s.DEBUG, "SECURE_COOKIES": s.SESSION_COOKIE_SECURE, "EAGER": s.CELERY_TASK_ALWAYS_EAGER,
    "IMPORT_MAX_BYTES": s.IMPORT_MAX_BYTES, "UPLOAD": s.DATA_UPLOAD_MAX_MEMORY_SIZE,
    "LOG_LEVEL": s.LOGGING["root"]["level"], "ENGINE": db["ENGINE"], "PORT": db.get("PORT"),
    "CONN_MAX_AGE": db.get("CONN_MAX_AGE"), "OPTIONS": db.get("OPTIONS"),
}))
"""


def start(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter that sets Django up with these variables (and none of the typed ones inherited)."""
    base = {k: v for k, v in os.environ.items() if k not in TYPED}
    return subprocess.run(
        [sys.executable, "-c", SHOW], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=base | {"DJANGO_SETTINGS_MODULE": "config.settings", "FLYWHEEL_VAR_DIR": str(tmp_path)} | env,
    )


@pytest.mark.parametrize(
    ("env", "name", "bad"),
    [
        ({"DEBUG": "ture"}, "DEBUG", "ture"),
        ({"SECURE_COOKIES": "maybe"}, "SECURE_COOKIES", "maybe"),
        ({"CELERY_TASK_ALWAYS_EAGER": "2"}, "CELERY_TASK_ALWAYS_EAGER", "2"),
        ({"DATABASE_URL": POSTGRES, "DB_SERVER_SIDE_BINDING": "enabled"}, "DB_SERVER_SIDE_BINDING", "enabled"),
        ({"IMPORT_MAX_BYTES": "50MB"}, "IMPORT_MAX_BYTES", "50MB"),
        ({"UPLOAD_MAX_MEMORY_BYTES": "1.5"}, "UPLOAD_MAX_MEMORY_BYTES", "1.5"),
        ({"IMPORT_MAX_BYTES": "-1"}, "IMPORT_MAX_BYTES", "-1"),
        ({"DATABASE_URL": POSTGRES, "DB_CONN_MAX_AGE": "forever"}, "DB_CONN_MAX_AGE", "forever"),
        ({"DATABASE_URL": POSTGRES, "DB_PREPARE_THRESHOLD": "five"}, "DB_PREPARE_THRESHOLD", "five"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL", "verbose"),
        ({"DATABASE_URL": "mysql://flywheel:s3cret-pw@db/flywheel"}, "DATABASE_URL", "mysql://"),
        ({"DATABASE_URL": POSTGRES.replace(":5432", ":54x2")}, "DATABASE_URL", ":54x2"),
    ],
)
def test_a_bad_value_stops_the_start_naming_the_variable_and_the_value(tmp_path, env, name, bad):
    result = start(tmp_path, **env)
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert f"{name}=" in message and bad in message and "use " in message, message
    assert "s3cret-pw" not in result.stderr  # a database password is never echoed


def test_good_spellings_parse(tmp_path):
    result = start(
        tmp_path, DEBUG=" TRUE ", SECURE_COOKIES="On", CELERY_TASK_ALWAYS_EAGER="no", IMPORT_MAX_BYTES="1024",
        UPLOAD_MAX_MEMORY_BYTES="", LOG_LEVEL="warning", DATABASE_URL=POSTGRES, DB_CONN_MAX_AGE="0",
        DB_PREPARE_THRESHOLD=" 7 ", DB_SERVER_SIDE_BINDING="OFF",
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["DEBUG"] is True and got["SECURE_COOKIES"] is True and got["EAGER"] is False
    assert got["IMPORT_MAX_BYTES"] == 1024 and got["UPLOAD"] == 5 * 1024 * 1024  # empty: the default
    assert got["LOG_LEVEL"] == "WARNING"
    assert got["ENGINE"] == "config.postgresql" and got["PORT"] == "5432" and got["CONN_MAX_AGE"] == 0
    assert got["OPTIONS"]["prepare_threshold"] == 7 and got["OPTIONS"]["server_side_binding"] is False


def test_unset_and_empty_variables_take_the_defaults(tmp_path):
    result = start(tmp_path, DEBUG="", DATABASE_URL="", LOG_LEVEL="  ")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["DEBUG"] is False and got["SECURE_COOKIES"] is False and got["EAGER"] is False
    assert got["LOG_LEVEL"] == "INFO" and got["ENGINE"] == "django.db.backends.sqlite3"


@pytest.mark.parametrize("word", ["1", "true", "True", "TRUE", "yes", "Yes", "on", "ON", " on "])
def test_every_true_spelling(monkeypatch, word):
    monkeypatch.setenv("FLYWHEEL_TEST_FLAG", word)
    assert settings_module.env_bool("FLYWHEEL_TEST_FLAG", False) is True


@pytest.mark.parametrize("word", ["0", "false", "False", "FALSE", "no", "No", "off", "OFF"])
def test_every_false_spelling(monkeypatch, word):
    monkeypatch.setenv("FLYWHEEL_TEST_FLAG", word)
    assert settings_module.env_bool("FLYWHEEL_TEST_FLAG", True) is False


@pytest.mark.parametrize("word", ["ture", "y", "n", "enable", "2", "-1", "truee"])
def test_other_words_are_refused(monkeypatch, word):
    monkeypatch.setenv("FLYWHEEL_TEST_FLAG", word)
    with pytest.raises(ImproperlyConfigured, match=r"FLYWHEEL_TEST_FLAG=.*1/0, true/false, yes/no or on/off"):
        settings_module.env_bool("FLYWHEEL_TEST_FLAG", False)


def test_unset_flag_and_number_take_the_defaults(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_TEST_FLAG", raising=False)
    assert settings_module.env_bool("FLYWHEEL_TEST_FLAG", True) is True
    assert settings_module.env_int("FLYWHEEL_TEST_FLAG", 9) == 9
