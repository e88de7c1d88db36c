"""Shared fixtures: a project with a manager, an annotator and a few comparisons."""
from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Membership

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


def make_comparisons(project, n: int, *, texts=("Answer one", "Answer two"), priority: int = 0):
    """n prompts, each with one completion from each of two checkpoints, paired into a comparison."""
    first = services.checkpoint_get_or_create(project=project, name="ckpt-a")
    second = services.checkpoint_get_or_create(project=project, name="ckpt-b")
    comparisons = []
    for i in range(n):
        prompt, _ = services.prompt_get_or_create(project=project, messages=f"Question {i} for {project.slug}?")
        a, _ = services.completion_get_or_create(prompt=prompt, checkpoint=first, text=f"{texts[0]} ({i})")
        b, _ = services.completion_get_or_create(prompt=prompt, checkpoint=second, text=f"{texts[1]} ({i})")
        comparison, _ = services.comparison_create(first=a, second=b, priority=priority)
        comparisons.append(comparison)
    return comparisons


@pytest.fixture
def comparisons(project):
    return make_comparisons(project, 5)
