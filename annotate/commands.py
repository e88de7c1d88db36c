"""What management commands share (annotate's and training's): looking a project up by its slug."""
from __future__ import annotations

from django.core.management.base import CommandError

from annotate.models import Project


def project_get(slug: str) -> Project:
    """The project with this slug; a ``CommandError`` naming the slug when there is none."""
    try:
        return Project.objects.get(slug=slug)
    except Project.DoesNotExist:
        raise CommandError(f"no project with slug {slug!r}") from None
