"""Projects and people without the Django admin: the console pages (annotate.views_people) and the
create_project / add_member commands, with the rules they share (annotate.people)."""
from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotate.models import Membership, Project

MEMBERS = "manage-members"


def members_url(project) -> str:
    return reverse(MEMBERS, args=[project.slug])


def roles(project) -> dict[str, str]:
    return dict(Membership.objects.filter(project=project).values_list("user__username", "role"))


@pytest.fixture
def staff(db, django_user_model):
    return django_user_model.objects.create_user(username="boss", password="x", is_staff=True)


@pytest.fixture
def bob(db, django_user_model):
    return django_user_model.objects.create_user(username="bob", email="Bob@Example.org", password="x")


# The pages


def test_staff_create_a_project_and_become_its_manager(client, staff):
    client.force_login(staff)
    assert 'href="/projects/new/"' in client.get(reverse("home")).content.decode()
    response = client.post(reverse("project-new"), {"slug": "team-2", "name": "Team two", "guidelines": "# Hi",
                                                    "votes_per_comparison": 3, "retrain_threshold": 50,
                                                    "lease_seconds": 120})
    assert response.status_code == 302 and response["Location"] == "/p/team-2/manage/members/"
    project = Project.objects.get(slug="team-2")
    assert (project.name, project.votes_per_comparison, project.retrain_threshold, project.lease_seconds) == (
        "Team two", 3, 50, 120)
    assert roles(project) == {"boss": "manager"}
    page = client.get(response["Location"]).content.decode()
    assert "Created Team two" in page and 'data-member="boss" data-role="manager"' in page


@pytest.mark.parametrize("data, message", [
    ({"slug": "demo", "name": "Again"}, "a project with slug &#x27;demo&#x27; already exists"),
    ({"slug": "not a slug!", "name": "X"}, "is not a valid slug"),
    ({"slug": "s" * 51, "name": "X"}, "at most 50 characters"),
    ({"slug": "ok", "name": "n" * 201}, "at most 200 characters"),
    ({"slug": "ok", "name": "X", "votes_per_comparison": 0}, "greater than or equal to 1"),
    ({"slug": "ok", "name": "X", "lease_seconds": "soon"}, "Enter a whole number"),
    ({"slug": "", "name": ""}, "This field is required"),
])
def test_bad_project_input_is_a_400_with_the_reason_and_creates_nothing(client, staff, project, data, message):
    client.force_login(staff)
    form = {"votes_per_comparison": 1, "retrain_threshold": 200, "lease_seconds": 600, **data}
    response = client.post(reverse("project-new"), form)
    assert response.status_code == 400 and message in response.content.decode()
    assert list(Project.objects.values_list("slug", flat=True)) == ["demo"]


def test_only_staff_may_create_projects(client, manager):
    client.force_login(manager)
    assert 'href="/projects/new/"' not in client.get(reverse("home")).content.decode()
    assert client.get(reverse("project-new")).status_code == 403
    assert client.post(reverse("project-new"), {"slug": "mine", "name": "Mine"}).status_code == 403
    assert not Project.objects.filter(slug="mine").exists()


def test_a_manager_adds_a_member_by_username_or_email_and_changes_their_role(client, project, manager, bob):
    client.force_login(manager)
    response = client.post(members_url(project), {"user": "bob", "role": "annotator"}, follow=True)
    assert "Added bob as annotator." in response.content.decode() and roles(project)["bob"] == "annotator"
    response = client.post(members_url(project), {"user": "bob@example.ORG", "role": "manager"}, follow=True)
    assert "Updated bob as manager." in response.content.decode() and roles(project)["bob"] == "manager"
    response = client.post(reverse("manage-member-role", args=[project.slug, bob.pk]), {"role": "annotator"})
    assert response.status_code == 302 and roles(project)["bob"] == "annotator"
    client.force_login(bob)
    assert client.get(reverse("compare", args=[project.slug])).status_code == 200  # bob can now annotate


@pytest.mark.parametrize("data, message", [
    ({"user": "nobody", "role": "annotator"}, "no user named &#x27;nobody&#x27;"),
    ({"user": "bob", "role": "owner"}, "Select a valid choice"),
    ({"user": "b" * 300, "role": "annotator"}, "at most 254 characters"),
    ({"user": "", "role": "annotator"}, "This field is required"),
])
def test_bad_member_input_is_a_400_with_the_reason(client, project, manager, bob, data, message):
    client.force_login(manager)
    response = client.post(members_url(project), data)
    assert response.status_code == 400 and message in response.content.decode()
    assert roles(project) == {"manager": "manager"}


def test_a_manager_removes_a_member_who_then_cannot_open_the_project(client, project, manager, annotator):
    client.force_login(manager)
    response = client.post(reverse("manage-member-remove", args=[project.slug, annotator.pk]), follow=True)
    assert "Removed annotator from Demo." in response.content.decode() and "annotator" not in roles(project)
    client.force_login(annotator)
    assert client.get(reverse("compare", args=[project.slug])).status_code == 404


def test_the_last_manager_can_be_neither_demoted_nor_removed(client, project, manager, bob):
    client.force_login(manager)
    demote = client.post(reverse("manage-member-role", args=[project.slug, manager.pk]), {"role": "annotator"})
    assert demote.status_code == 400 and "manager is the last manager of demo" in demote.content.decode()
    remove = client.post(reverse("manage-member-remove", args=[project.slug, manager.pk]))
    assert remove.status_code == 400 and "make someone else a manager first" in remove.content.decode()
    assert roles(project) == {"manager": "manager"}
    # With a second manager the first may step down, and then no longer manages the project.
    client.post(members_url(project), {"user": "bob", "role": "manager"})
    response = client.post(reverse("manage-member-role", args=[project.slug, manager.pk]), {"role": "annotator"})
    assert response["Location"] == reverse("home") and roles(project) == {"manager": "annotator", "bob": "manager"}
    assert client.get(members_url(project)).status_code == 403


def test_annotators_and_strangers_cannot_manage_members(client, project, annotator, outsider, bob):
    client.force_login(annotator)
    assert client.get(members_url(project)).status_code == 403
    assert client.post(members_url(project), {"user": "bob", "role": "manager"}).status_code == 403
    assert client.post(reverse("manage-member-remove", args=[project.slug, annotator.pk])).status_code == 403
    client.force_login(outsider)
    assert client.get(members_url(project)).status_code == 404
    client.logout()
    assert client.get(members_url(project)).status_code == 302  # to the login page
    assert roles(project) == {"annotator": "annotator"}


def test_member_actions_need_post_and_a_member(client, project, manager, bob):
    client.force_login(manager)
    assert client.get(reverse("manage-member-remove", args=[project.slug, manager.pk])).status_code == 405
    assert client.post(reverse("manage-member-remove", args=[project.slug, bob.pk])).status_code == 404
    assert client.post(reverse("manage-member-role", args=[project.slug, manager.pk]), {"role": "x"}).status_code == 400


def test_member_forms_carry_csrf_and_work_without_javascript(project, manager, annotator):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    page = client.get(members_url(project))
    text = page.content.decode()
    assert text.count("csrfmiddlewaretoken") >= 3 and "hx-" not in text.split("<main>")[1]
    assert "<script" not in text.split("<main>")[1] and " style=" not in text
    assert client.post(members_url(project), {"user": "annotator", "role": "manager"}).status_code == 403  # no token
    assert roles(project)["annotator"] == "annotator"


# The commands


def test_create_project_then_add_members_from_the_command_line(db, django_user_model, tmp_path, capsys,
                                                               monkeypatch):
    django_user_model.objects.create_user(username="alice", password="x")
    guidelines = tmp_path / "g.md"
    guidelines.write_text("# Pick the kinder answer\n")
    call_command("create_project", slug="demo2", name="Demo two", manager="alice", overlap=3,
                 guidelines_file=str(guidelines))
    project = Project.objects.get(slug="demo2")
    assert project.votes_per_comparison == 3 and project.guidelines.startswith("# Pick")
    assert roles(project) == {"alice": "manager"}

    call_command("add_member", project="demo2", user="carol", role="annotator", create_user=True)
    out = capsys.readouterr().out
    password = out.split("with password: ")[1].split()[0]
    carol = django_user_model.objects.get(username="carol")
    assert carol.check_password(password) and roles(project)["carol"] == "annotator"

    monkeypatch.setenv("NEW_USER_PASSWORD", "a-long-chosen-secret-9")
    call_command("add_member", project="demo2", user="dave", role="manager", create_user=True, email="d@x.org")
    assert "a-long-chosen-secret-9" not in capsys.readouterr().out
    assert django_user_model.objects.get(username="dave").check_password("a-long-chosen-secret-9")

    call_command("add_member", project="demo2", user="dave", role="manager")
    assert "already manager in demo2; nothing to do" in capsys.readouterr().out
    call_command("add_member", project="demo2", user="carol", remove=True)
    call_command("add_member", project="demo2", user="carol", remove=True)
    assert "is not a member of demo2; nothing to do" in capsys.readouterr().out
    assert roles(project) == {"alice": "manager", "dave": "manager"}


@pytest.mark.parametrize("options, message", [
    ({"slug": "demo", "name": "Again"}, "a project with slug 'demo' already exists"),
    ({"slug": "Bad slug", "name": "X"}, "'Bad slug' is not a valid slug"),
    ({"slug": "new", "name": "X", "manager": "ghost"}, "no user named 'ghost'"),
    ({"slug": "new", "name": "X", "overlap": 0}, "votes_per_comparison must be between 1 and 20"),
    ({"slug": "new", "name": "X", "guidelines_file": "/nonexistent/g.md"}, "cannot read the guidelines file"),
])
def test_create_project_refuses_bad_input_clearly(project, options, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_project", **options)
    assert list(Project.objects.values_list("slug", flat=True)) == ["demo"]


@pytest.mark.parametrize("options, message", [
    ({"project": "nope", "user": "manager"}, "no project with slug 'nope'"),
    ({"project": "demo", "user": "ghost"}, "no user named 'ghost' \\(add --create-user"),
    ({"project": "demo", "user": "manager", "role": "annotator"}, "manager is the last manager of demo"),
    ({"project": "demo", "user": "manager", "remove": True}, "last manager"),
    ({"project": "demo", "user": "bad name!", "create_user": True}, "cannot create user 'bad name!'"),
])
def test_add_member_refuses_bad_input_clearly(project, manager, options, message):
    with pytest.raises(CommandError, match=message):
        call_command("add_member", **options)
    assert roles(project) == {"manager": "manager"}


def test_add_member_refuses_a_weak_chosen_password(project, monkeypatch, django_user_model):
    monkeypatch.setenv("NEW_USER_PASSWORD", "123")
    with pytest.raises(CommandError, match="NEW_USER_PASSWORD is refused"):
        call_command("add_member", project="demo", user="erin", create_user=True)
    assert not django_user_model.objects.filter(username="erin").exists()


@pytest.mark.django_db(transaction=True)
def test_two_managers_demoting_each_other_at_once_leave_one_manager(django_user_model):
    import threading

    from django.db import connection

    from annotate import people
    from annotate.services import InvalidInput

    project = people.project_create(slug="race", name="Race")
    ann, ben = (django_user_model.objects.create_user(username=name) for name in ("ann", "ben"))
    for user in (ann, ben):
        people.member_set(project=project, user=user, role="manager")
    barrier, outcomes = threading.Barrier(2), []

    def demote(user):
        try:
            barrier.wait()
            people.member_set(project=project, user=user, role="annotator")
            outcomes.append("demoted")
        except InvalidInput:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=demote, args=(user,)) for user in (ann, ben)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["demoted", "refused"]
    assert sorted(roles(project).values()) == ["annotator", "manager"]
