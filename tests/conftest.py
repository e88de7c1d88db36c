"""Shared fixtures: a project with a manager, an annotator and a few comparisons."""
from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Membership
from tests.store import s3_artifacts, s3_client, s3_endpoint  # noqa: F401  (the S3-compatible store's fixtures)

PASSWORD = "correct-horse-42"


@pytest.fixture
def project(db):
    return services.project_create(slug="demo", name="Demo", guidelines="# Be fair\nPick the *better* answer.")


@pytest.fixture
def manager(project):
    return services.user_with_role(
        project=project, username="manager", password=PASSWORD, role=Membership.Role.MANAGER
    )


@pytest.fixture
def annotator(project):
    return services.user_with_role(
        project=project, username="annotator", password=PASSWORD, role=Membership.Role.ANNOTATOR
    )


@pytest.fixture
def outsider(db, django_user_model):
    user = django_user_model.objects.create_user(username="outsider", password=PASSWORD)
    return user


def make_comparisons(project, n: int, *, texts=("Answer one", "Answer two"), priority: int = 0, start: int = 0):
    """n prompts, each with one completion from each of two checkpoints, paired into a comparison."""
    first = services.checkpoint_get_or_create(project=project, name="ckpt-a")
    second = services.checkpoint_get_or_create(project=project, name="ckpt-b")
    comparisons = []
    for i in range(start, start + n):
        prompt, _ = services.prompt_get_or_create(project=project, messages=f"Question {i} for {project.slug}?")
        a, _ = services.completion_get_or_create(prompt=prompt, checkpoint=first, text=f"{texts[0]} ({i})")
        b, _ = services.completion_get_or_create(prompt=prompt, checkpoint=second, text=f"{texts[1]} ({i})")
        comparison, _ = services.comparison_create(first=a, second=b, priority=priority)
        comparisons.append(comparison)
    return comparisons


@pytest.fixture
def comparisons(project):
    return make_comparisons(project, 5)


@pytest.fixture(scope="session", autouse=True)
def celery_broker(tmp_path_factory):
    """Messages sent by tests go to a throwaway broker, never to the demo's.

    With the embedded file-system broker that is a fresh folder; with Redis (CI) the
    broker URL names a database of its own. Returns the env a worker process needs.
    """
    from django.conf import settings

    from config.celery import app

    env = {"CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        folder = tmp_path_factory.mktemp("broker")
        (folder / "queue").mkdir()
        (folder / "processed").mkdir()
        (folder / "control").mkdir()
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
        }
        env["CELERY_BROKER_DIR"] = str(folder)
    return env


@pytest.fixture(autouse=True)
def _fresh_webhook_lookups():
    # annotate.events remembers per project id whether a webhook wants votes; ids repeat across tests.
    from annotate import events

    events._wants_votes.clear()


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    # The throttles count in the cache (each process's memory here): no test inherits another's counts.
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    # The default hasher costs ~0.5 s per user on this machine; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def worker_env() -> dict[str, str]:
    """Extra environment for the real Celery worker process of tests/training/test_worker.py's
    ``worker`` fixture (a test module may override this fixture)."""
    return {}


@pytest.fixture
def eager():
    """Celery tasks run where they are sent, in the test's process."""
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.fixture(autouse=True)
def _fresh_pool_checks():
    """annotate.active remembers per process which projects pool pairs; ids are reused between tests."""
    from annotate import active

    active._pooling.clear()
    yield
    active._pooling.clear()
