"""Projects and people without the Django admin: staff create projects; a project's managers
add members by username or email, change their role and remove them (annotate.people holds the rules)."""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from annotate import access, people
from annotate.models import Membership
from annotate.services import InvalidInput

ROLE_CHOICES = Membership.Role.choices


class ProjectNewForm(forms.Form):
    slug = forms.CharField(max_length=people.SLUG_MAX, help_text="Letters, digits, hyphens and underscores; "
                           "it is in every address of the project and cannot be changed later.")
    name = forms.CharField(max_length=people.NAME_MAX)
    guidelines = forms.CharField(required=False, max_length=people.GUIDELINES_MAX,
                                 widget=forms.Textarea(attrs={"rows": 6}), help_text="Markdown shown to annotators.")
    votes_per_comparison = forms.IntegerField(initial=1, min_value=1, max_value=20,
                                              help_text="How many people vote on each comparison (the overlap).")
    retrain_threshold = forms.IntegerField(initial=200, min_value=0, max_value=1_000_000,
                                           help_text="New votes that trigger a reward-model retrain (0: never).")
    lease_seconds = forms.IntegerField(initial=600, min_value=30, max_value=24 * 3600,
                                       help_text="How long a comparison stays reserved for the person shown it.")


class MemberAddForm(forms.Form):
    user = forms.CharField(max_length=254, label="Username or email")
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Membership.Role.ANNOTATOR)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)


@login_required
def project_new(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("Only staff users may create projects.")
    form = ProjectNewForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        settings = people.ProjectSettings(**{key: data[key] for key in people.LIMITS})
        try:
            project = people.project_create(slug=data["slug"], name=data["name"], guidelines=data["guidelines"],
                                            manager=request.user, settings=settings)
        except InvalidInput as error:
            form.add_error("slug" if "slug" in str(error) else None, f"The project was not created: {error}.")
        else:
            messages.success(request, f"Created {project.name}; you are its manager. Add its members here.")
            return redirect("manage-members", slug=project.slug)
    status = 400 if form.errors else 200
    return render(request, "annotate/project_new.html", {"form": form}, status=status)


def _members_page(request: HttpRequest, project, add_form: MemberAddForm, *, error: str = "",
                  status: int = 200) -> HttpResponse:
    context = {"project": project, "form": add_form, "members": people.members_of(project),
               "roles": ROLE_CHOICES, "error": error}
    return render(request, "annotate/manage_members.html", context, status=status)


@login_required
def members_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    form = MemberAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = people.user_find(form.cleaned_data["user"])
            membership, created = people.member_set(project=project, user=user, role=form.cleaned_data["role"])
        except InvalidInput as error:
            form.add_error("user", f"Nobody was added: {error}.")
        else:
            verb = "Added" if created else "Updated"
            messages.success(request, f"{verb} {user.username} as {membership.role}.")
            return redirect("manage-members", slug=project.slug)
    return _members_page(request, project, form, status=400 if form.errors else 200)


def _member_of(project, user_id: int):
    membership = Membership.objects.filter(project=project, user_id=user_id).select_related("user").first()
    if membership is None:
        raise Http404("No such member.")
    return membership.user


@login_required
@require_POST
def member_role(request: HttpRequest, slug: str, user_id: int) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    user = _member_of(project, user_id)
    form = MemberRoleForm(request.POST)
    try:
        if not form.is_valid():
            raise InvalidInput(f"the role must be one of {', '.join(people.ROLES)}")
        people.member_set(project=project, user=user, role=form.cleaned_data["role"])
    except InvalidInput as error:
        return _members_page(request, project, MemberAddForm(), error=f"{user.username}'s role was not changed: "
                             f"{error}.", status=400)
    messages.success(request, f"{user.username} is now {form.cleaned_data['role']}.")
    return _after_change(request, project)


@login_required
@require_POST
def member_remove(request: HttpRequest, slug: str, user_id: int) -> HttpResponse:
    project = access.project_for_manager(request.user, slug)
    user = _member_of(project, user_id)
    try:
        people.member_remove(project=project, user=user)
    except InvalidInput as error:
        return _members_page(request, project, MemberAddForm(), error=f"{user.username} was not removed: {error}.",
                             status=400)
    messages.success(request, f"Removed {user.username} from {project.name}.")
    return _after_change(request, project)


def _after_change(request: HttpRequest, project) -> HttpResponse:
    # A manager who stepped down or left may no longer open the members page.
    if access.role_in(project, request.user) == Membership.Role.MANAGER:
        return redirect("manage-members", slug=project.slug)
    return redirect("home")
