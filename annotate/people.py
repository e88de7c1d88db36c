"""Projects and their people: create a project, add, re-role and remove members.

One entry point per action; the console pages (annotate.views_people) and the commands
(create_project, add_member) both call these. Every refusal is an ``InvalidInput`` whose
message can be shown to the person as is.

Rules:
- Who may create a project is decided by the caller: the console lets staff users do it,
  the command is for whoever holds the server.
- A project keeps at least one manager once it has one: the last manager can be neither
  demoted nor removed (staff see every project as managers, but are not counted).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email, validate_slug
from django.db import IntegrityError, transaction

from annotate.models import Membership, Project
from annotate.services import InvalidInput

SLUG_MAX = Project._meta.get_field("slug").max_length
NAME_MAX = Project._meta.get_field("name").max_length
GUIDELINES_MAX = 100_000
# The same bounds as the settings form (annotate.forms.ProjectSettingsForm).
LIMITS = {
    "votes_per_comparison": (1, 20, "people per comparison"),
    "retrain_threshold": (0, 1_000_000, "new votes before a retrain (0: never)"),
    "lease_seconds": (30, 24 * 3600, "seconds a comparison stays reserved"),
}
ROLES = tuple(Membership.Role.values)


@dataclass(frozen=True)
class ProjectSettings:
    votes_per_comparison: int = 1
    retrain_threshold: int = 200
    lease_seconds: int = 600


def project_create(*, slug: str, name: str, manager=None, guidelines: str = "",
                   settings: ProjectSettings = ProjectSettings()) -> Project:
    """A new project, with ``manager`` (a user, optional) as its first manager."""
    slug, name = slug.strip(), name.strip()
    if not slug:
        raise InvalidInput("the slug is empty")
    if len(slug) > SLUG_MAX:
        raise InvalidInput(f"the slug is {len(slug)} characters long; at most {SLUG_MAX}")
    try:
        validate_slug(slug)
    except ValidationError:
        raise InvalidInput(f"{slug!r} is not a valid slug: use letters, digits, hyphens and underscores") from None
    if not name:
        raise InvalidInput("the name is empty")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"the name is {len(name)} characters long; at most {NAME_MAX}")
    if len(guidelines) > GUIDELINES_MAX:
        raise InvalidInput(f"the guidelines are {len(guidelines)} characters long; at most {GUIDELINES_MAX}")
    for field, (low, high, what) in LIMITS.items():
        value = getattr(settings, field)
        if not low <= value <= high:
            raise InvalidInput(f"{field} must be between {low} and {high} ({what}), not {value}")
    if Project.objects.filter(slug=slug).exists():
        raise InvalidInput(f"a project with slug {slug!r} already exists")
    try:
        with transaction.atomic():
            project = Project.objects.create(slug=slug, name=name, guidelines=guidelines,
                                             votes_per_comparison=settings.votes_per_comparison,
                                             retrain_threshold=settings.retrain_threshold,
                                             lease_seconds=settings.lease_seconds)
            if manager is not None:
                Membership.objects.create(project=project, user=manager, role=Membership.Role.MANAGER)
    except IntegrityError:  # created by someone else between the check and the insert
        raise InvalidInput(f"a project with slug {slug!r} already exists") from None
    return project


def user_find(identifier: str):
    """The user with this username, or else this email address (case-insensitive, if only one has it)."""
    identifier = identifier.strip()
    if not identifier:
        raise InvalidInput("no user given")
    users = get_user_model().objects
    user = users.filter(username=identifier).first()
    if user is None and "@" in identifier:
        found = list(users.filter(email__iexact=identifier)[:2])
        if len(found) > 1:
            raise InvalidInput(f"several users have the email {identifier!r}; give a username")
        user = found[0] if found else None
    if user is None:
        raise InvalidInput(f"no user named {identifier!r}")
    return user


def user_create(*, username: str, password: str, email: str = ""):
    """A new active user; refuses a taken or invalid username or email."""
    model = get_user_model()
    field = model._meta.get_field(model.USERNAME_FIELD)
    if not username:
        raise InvalidInput("the username is empty")
    try:
        field.run_validators(username)
        if len(username) > field.max_length:
            raise ValidationError(f"at most {field.max_length} characters")
        if email:
            validate_email(email)
    except ValidationError as error:
        raise InvalidInput(f"cannot create user {username!r}: {' '.join(error.messages)}") from None
    if model.objects.filter(username=username).exists():
        raise InvalidInput(f"a user named {username!r} already exists")
    return model.objects.create_user(username=username, email=email, password=password)


def members_of(project: Project) -> list[Membership]:
    """The project's memberships with their users, managers first, then by username."""
    return list(Membership.objects.filter(project=project).select_related("user")
                .order_by("-role", "user__username"))  # "manager" sorts after "annotator"


def _managers_locked(project: Project) -> int:
    # Lock the project row so two managers demoting each other cannot both pass the check.
    Project.objects.select_for_update().only("pk").get(pk=project.pk)
    return Membership.objects.filter(project=project, role=Membership.Role.MANAGER).count()


def member_set(*, project: Project, user, role: str) -> tuple[Membership, bool]:
    """Make ``user`` a member with ``role`` (added, or the role changed); (membership, created)."""
    if role not in ROLES:
        raise InvalidInput(f"the role must be one of {', '.join(ROLES)}, not {role!r}")
    with transaction.atomic():
        managers = _managers_locked(project)
        membership = Membership.objects.filter(project=project, user=user).first()
        if membership is None:
            return Membership.objects.create(project=project, user=user, role=role), True
        if membership.role == Membership.Role.MANAGER and role != Membership.Role.MANAGER and managers <= 1:
            raise InvalidInput(f"{user.username} is the last manager of {project.slug}; "
                               "make someone else a manager first")
        if membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        return membership, False


def member_remove(*, project: Project, user) -> bool:
    """Remove ``user`` from the project; False when they were not a member."""
    with transaction.atomic():
        managers = _managers_locked(project)
        membership = Membership.objects.filter(project=project, user=user).first()
        if membership is None:
            return False
        if membership.role == Membership.Role.MANAGER and managers <= 1:
            raise InvalidInput(f"{user.username} is the last manager of {project.slug}; "
                               "make someone else a manager first")
        membership.delete()
        return True
