"""Who may do what in a project. Views call one of these before anything else."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404

from annotate.models import Membership, Project


def role_in(project: Project, user) -> str | None:
    """The user's role in the project, ``"manager"`` for staff, or None for an outsider."""
    if not user.is_authenticated:
        return None
    if user.is_staff:
        return Membership.Role.MANAGER
    membership = Membership.objects.filter(project=project, user=user).only("role").first()
    return membership.role if membership else None


def project_for_annotator(user, slug: str) -> Project:
    """The project if the user is any member of it (or staff); 404 for strangers, so slugs don't leak."""
    project = get_object_or_404(Project, slug=slug)
    if role_in(project, user) is None:
        raise _not_found()
    return project


def project_for_manager(user, slug: str) -> Project:
    project = get_object_or_404(Project, slug=slug)
    role = role_in(project, user)
    if role is None:
        raise _not_found()
    if role != Membership.Role.MANAGER:
        raise PermissionDenied("Only managers of this project may do this.")
    return project


def projects_of(user):
    """The projects a user may open, with their role annotated as ``my_role``."""
    from django.db.models import OuterRef, Subquery, Value

    if user.is_staff:
        return Project.objects.annotate(my_role=Value(Membership.Role.MANAGER)).order_by("name")
    role = Membership.objects.filter(project=OuterRef("pk"), user=user).values("role")[:1]
    return Project.objects.filter(memberships__user=user).annotate(my_role=Subquery(role)).order_by("name")


def _not_found():
    from django.http import Http404

    return Http404("No such project.")
