"""One env-driven settings module.

SQLite, an embedded file-system broker and a local artifacts folder by default;
PostgreSQL when ``DATABASE_URL`` is set and Redis when ``CELERY_BROKER_URL`` is. A variable
whose value cannot be read (``DEBUG=ture``, ``IMPORT_MAX_BYTES=50MB``) stops the start with
ImproperlyConfigured naming it, its value and what is accepted.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def refuse(name: str, value: str, accepted: str) -> NoReturn:
    """The typed readers below refuse a value they cannot read rather than guess (unset or blank: the default)."""
    raise ImproperlyConfigured(f"{name}={value!r} is not valid: {accepted}")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _env_set(name: str) -> str | None:
    """The variable's value, stripped; None when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_bool(name: str, default: bool = False) -> bool:
    value = _env_set(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    refuse(name, os.environ[name],
           "use 1/0, true/false, yes/no or on/off (any case), or leave it empty for the default")


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    value = _env_set(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number < minimum:
        refuse(name, os.environ[name], f"use a number, {minimum:g} or more, or leave it empty for the default")
    return number


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _env_set(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or (minimum is not None and number < minimum):
        at_least = "" if minimum is None else f", {minimum} or more"
        refuse(name, os.environ[name], f"use a whole number{at_least}, or leave it empty for the default")
    return number


def env_networks(name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (a bare address is one host); empty: none."""
    value = _env_set(name)
    if value is None:
        return ()
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())
    except ValueError as error:
        refuse(name, os.environ[name], f"use comma-separated networks like 10.0.0.0/8,192.168.1.20 ({error})")


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (given in upper case), matched case-insensitively."""
    value = _env_set(name)
    if value is None:
        return default
    if value.upper() not in choices:
        refuse(name, os.environ[name],
               f"use one of {', '.join(choices)} (any case), or leave it empty for the default")
    return value.upper()


def _without_password(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


def database_from_url(url: str, name: str = "DATABASE_URL") -> dict:
    """Turn ``postgres://user:pw@host:port/name?opt=v`` or ``sqlite:///path`` into a DATABASES entry."""
    accepted = "use postgres://USER:PASSWORD@HOST:PORT/NAME or sqlite:///PATH"
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": unquote(parsed.path[1:]) or ":memory:",
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
    if parsed.scheme not in {"postgres", "postgresql", "pgsql"}:
        refuse(name, _without_password(url), f"the scheme {parsed.scheme!r} is not supported: {accepted}")
    try:
        port = parsed.port
    except ValueError:
        refuse(name, _without_password(url), f"the port is not a number from 0 to 65535: {accepted}")
    return {
        # Django's backend, health-checking a busy connection at most once a second (see there).
        "ENGINE": "config.postgresql",
        "NAME": unquote(parsed.path[1:]),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(port or ""),
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60, minimum=0),
        "CONN_HEALTH_CHECKS": True,
        # Server-side binding lets psycopg prepare a statement once a connection has run it
        # DB_PREPARE_THRESHOLD times; the vote path's fixed statements then skip parsing and
        # planning (about a third of its database CPU). Turn it off behind a transaction-mode pooler.
        "OPTIONS": {
            "server_side_binding": env_bool("DB_SERVER_SIDE_BINDING", True),
            "prepare_threshold": env_int("DB_PREPARE_THRESHOLD", 5, minimum=0),
            **dict(parse_qsl(parsed.query)),
        },
    }


VAR_DIR = Path(env_str("FLYWHEEL_VAR_DIR", str(BASE_DIR / "var")))
# Runtime state (SQLite file, broker folder, artifacts) lives here; a fresh clone has none yet.
(VAR_DIR / "staticfiles").mkdir(parents=True, exist_ok=True)
DEBUG = env_bool("DEBUG", False)


def _local_secret_key(path: Path) -> str:
    """This installation's own key, made once (random, readable by its owner only) and kept in VAR_DIR:
    the demo and a lone host never run on a key anyone else knows. Several web hosts must share one:
    set SECRET_KEY."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made before, or by a sibling process a moment ago
        for _ in range(50):
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.01)
        raise ImproperlyConfigured(f"{path} is empty: remove it (a new key is made) or set SECRET_KEY") from None
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


MAKE_A_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
# With DEBUG off the key must be given (SECRET_KEY); LOCAL_SECRET_KEY=1 opts in to a key made once for this
# host and kept in VAR_DIR/secret_key (the demo, a lone host): never silently, never a public default.
LOCAL_SECRET_KEY = env_bool("LOCAL_SECRET_KEY", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY and not (DEBUG or LOCAL_SECRET_KEY):
    raise ImproperlyConfigured(
        f"SECRET_KEY is not set and DEBUG is off: set SECRET_KEY to 32 or more random characters ({MAKE_A_KEY}), "
        f"the same on every web host and worker; or, on a lone host or the demo, set LOCAL_SECRET_KEY=1 to make "
        f"one and keep it in {VAR_DIR / 'secret_key'}")
SECRET_KEY = SECRET_KEY or _local_secret_key(VAR_DIR / "secret_key")
if not DEBUG and (len(SECRET_KEY) < 32 or SECRET_KEY.startswith(("CHANGE", "django-insecure-", "dev-only-insecure"))):
    refuse("SECRET_KEY", SECRET_KEY[:12] + "...", "with DEBUG off it must be a real secret of 32 or more random "
           f"characters ({MAKE_A_KEY}), not a placeholder; or leave it unset with LOCAL_SECRET_KEY=1 on a lone "
           "host, which then makes and keeps its own")
ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "annotate",
    "rewardmodel",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "config.throttle.LoginThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
# The pages pass it: no inline script or style anywhere (config/csp.py; the browser tests fail on a violation).
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
)
# Requests under /api/ (config.wsgi routes them): bearer-token calls need no session, CSRF,
# messages or htmx, so they skip those; the security headers still apply.
API_MIDDLEWARE = ["django.middleware.security.SecurityMiddleware"]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

DATABASES = {
    "default": database_from_url(_env_set("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'flywheel.sqlite3'}")
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not shared-cache memory: concurrency tests need SQLite's real locking and busy timeout.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
]
# Throttling (config/throttle.py): failed sign-ins per account and per address in 15 minutes, API calls
# per token per minute (0 turns one off). The counters live in the cache: CACHE_URL=redis://... shares
# them between a server's worker processes and hosts; without it each process counts alone.
LOGIN_FAILURES_PER_ACCOUNT = env_int("LOGIN_FAILURES_PER_ACCOUNT", 10, minimum=0)
LOGIN_FAILURES_PER_ADDRESS = env_int("LOGIN_FAILURES_PER_ADDRESS", 50, minimum=0)
API_REQUESTS_PER_MINUTE = env_int("API_REQUESTS_PER_MINUTE", 1200, minimum=0)
CACHE_URL = env_str("CACHE_URL")
if CACHE_URL and not CACHE_URL.startswith(("redis://", "rediss://")):
    refuse("CACHE_URL", CACHE_URL, "use redis://HOST:6379/N, or leave it empty for each process's memory")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
          if CACHE_URL else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# HTTPS in production (README, "Deploying for a team"): redirect plain HTTP, tell browsers to stay on
# HTTPS, and trust the TLS-terminating proxy's X-Forwarded-Proto. /healthz answers over plain HTTP
# for the load balancer's checks.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
# gunicorn serves static files through WhiteNoise straight from the source folders (no collectstatic step).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Artifacts (snapshots, reward models, checkpoints) live under ARTIFACTS_URL: empty means the local
# folder ARTIFACTS_DIR (file://), else s3://bucket/prefix on any S3-compatible store (annotate.artifacts).
# ARTIFACTS_DIR also holds a run's local scratch; ARTIFACTS_CACHE_DIR the verified copies pulled from a store.
ARTIFACTS_DIR = Path(env_str("ARTIFACTS_DIR", str(VAR_DIR / "artifacts")))
ARTIFACTS_URL = env_str("ARTIFACTS_URL").rstrip("/")
if ARTIFACTS_URL and not re.fullmatch(r"file:///.*|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?", ARTIFACTS_URL):
    refuse("ARTIFACTS_URL", ARTIFACTS_URL, "use file:///absolute/folder or s3://bucket/prefix, or leave it empty")
ARTIFACTS_CACHE_DIR = Path(env_str("ARTIFACTS_CACHE_DIR", str(VAR_DIR / "cache" / "artifacts")))
# The most the cache may hold (GiB): least recently used copies go first, never one a run here has pinned; 0: no limit.
ARTIFACTS_CACHE_MAX_GB = env_float("ARTIFACTS_CACHE_MAX_GB", 100.0)
# The S3-compatible store: empty endpoint means AWS itself; empty keys leave them to botocore's own chain.
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL")
S3_REGION = env_str("S3_REGION") or env_str("AWS_DEFAULT_REGION")
AWS_ACCESS_KEY_ID = env_str("AWS_ACCESS_KEY_ID")
AWS_SECRET_ACCESS_KEY = env_str("AWS_SECRET_ACCESS_KEY")
# The default reward-model backbone: an alias resolved offline by rewardmodel.lib.backbones, or a hub id.
REWARD_BACKBONE = env_str("REWARD_BACKBONE", "all-minilm-l6-v2")
# Imports larger than this are refused before parsing.
IMPORT_MAX_BYTES = env_int("IMPORT_MAX_BYTES", 50 * 1024 * 1024, minimum=0)
# The longest one prompt message or completion may be (characters): a longer one is refused at import.
TEXT_MAX_CHARS = env_int("TEXT_MAX_CHARS", 200_000, minimum=1)
# The key of the pseudonyms that stand for annotators in exports (annotate.pseudonyms); empty: from SECRET_KEY.
# Set it to keep pseudonyms stable across a SECRET_KEY rotation, or to give two deployments the same ones.
EXPORT_PSEUDONYM_KEY = env_str("EXPORT_PSEUDONYM_KEY")
# How long an annotator may undo a vote or say how much better after voting (0: never).
VOTE_UNDO_SECONDS = env_int("VOTE_UNDO_SECONDS", 120, minimum=0)
# Webhooks (annotate.events): attempts per delivery, the first retry's wait (doubling after), the request timeout.
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WEBHOOK_BACKOFF_S = env_float("WEBHOOK_BACKOFF_S", 10.0)
WEBHOOK_TIMEOUT_S = env_float("WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1)
# Webhooks reach public addresses only (annotate.egress): a receiver on a private, loopback or link-local
# address (an internal service, the cloud's metadata endpoint) must be in these networks, comma-separated
# CIDRs ("10.0.0.0/8,192.168.1.20/32"); checked when a webhook is added and again at every connection.
WEBHOOK_ALLOWED_NETWORKS = env_networks("WEBHOOK_ALLOWED_NETWORKS")
# How long one server-sent-events response lasts before the browser reconnects (Last-Event-ID).
EVENTS_STREAM_SECONDS = env_int("EVENTS_STREAM_SECONDS", 300, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("UPLOAD_MAX_MEMORY_BYTES", 5 * 1024 * 1024, minimum=0)
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE

# Where this worker's generation runs put a local checkpoint, and in what dtype. "auto": CUDA when the
# worker sees a GPU, else the CPU; bf16 on a GPU that has it, fp16 on older GPUs, fp32 on the CPU.
WORKER_DEVICE = (_env_set("WORKER_DEVICE") or "auto").lower()
if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", WORKER_DEVICE):
    refuse("WORKER_DEVICE", os.environ["WORKER_DEVICE"],
           "use auto, cpu, cuda, cuda:N (a GPU's index) or mps, or leave it empty for the default")
# How many processes (one per GPU) a training run on this worker uses: above 1, reward-model, DPO and
# PPO runs execute under torchrun (a run's own ``world_size`` setting overrides it).
WORKER_WORLD_SIZE = env_int("WORKER_WORLD_SIZE", 1, minimum=1)
# A run whose worker process is lost (killed, crashed, its host down) starts again from the beginning,
# up to this many attempts in all; lost means gone from its host, or no heartbeat for RUN_LOST_AFTER_S.
RUN_MAX_ATTEMPTS = env_int("RUN_MAX_ATTEMPTS", 3, minimum=1)
RUN_LOST_AFTER_S = env_int("RUN_LOST_AFTER_S", 120, minimum=30)
WORKER_DTYPE = env_choice("WORKER_DTYPE", "AUTO", ("AUTO", "FLOAT32", "BFLOAT16", "FLOAT16")).lower()
# The reward-hacking guard (training.guards): how many of a project's prompts make its fixed prompt set, on
# which every battled checkpoint's proxy reward and KL from its base are measured (0: no guard metrics).
GUARD_PROMPTS = env_int("GUARD_PROMPTS", 16, minimum=0)
# Where this worker's reward-model, DPO, PPO and local-checkpoint generation runs execute: "local" (in the
# worker, or under torchrun on its GPUs) or "ray" (submitted to the Ray cluster whose dashboard is at
# RAY_ADDRESS through the Ray Jobs API; the worker follows the job: progress, log, cancel, publish).
RUN_BACKEND = env_choice("RUN_BACKEND", "LOCAL", ("LOCAL", "RAY")).lower()
RAY_ADDRESS = env_str("RAY_ADDRESS", "http://127.0.0.1:8265")
# What one process of a Ray job reserves (a job of world_size N asks N times as much): 0 GPUs on a CPU cluster.
RAY_GPUS_PER_PROCESS = env_int("RAY_GPUS_PER_PROCESS", 1, minimum=0)
RAY_CPUS_PER_PROCESS = env_int("RAY_CPUS_PER_PROCESS", 1, minimum=1)

# Celery: an embedded file-system broker by default, so the demo needs no service.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_DIR = Path(env_str("CELERY_BROKER_DIR", str(VAR_DIR / "broker")))
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {
        "handlers": ["console"],
        # The names Python's logging takes (WARN and FATAL are its aliases).
        "level": env_choice("LOG_LEVEL", "INFO",
                            ("NOTSET", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "FATAL", "CRITICAL")),
    },
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
