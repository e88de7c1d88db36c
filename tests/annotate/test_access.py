"""Who may reach which URL: every page and API route, for every kind of visitor."""
from __future__ import annotations

import pytest
from django.urls import reverse

from annotate.tokens import token_create

ANNOTATOR_PAGES = ["home", "guidelines", "compare"]
MANAGER_PAGES = ["manage-settings", "manage-import", "manage-export", "manage-export-download"]


def _url(name, project):
    return reverse(name) if name == "home" else reverse(name, args=[project.slug])


@pytest.mark.parametrize("name", ANNOTATOR_PAGES + MANAGER_PAGES)
def test_anonymous_visitors_are_sent_to_login(client, project, name):
    response = client.get(_url(name, project))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", ANNOTATOR_PAGES)
def test_annotators_reach_the_annotation_pages(client, project, annotator, comparisons, name):
    client.force_login(annotator)
    assert client.get(_url(name, project)).status_code == 200


@pytest.mark.parametrize("name", MANAGER_PAGES)
def test_annotators_cannot_reach_manager_pages(client, project, annotator, name):
    client.force_login(annotator)
    assert client.get(_url(name, project)).status_code == 403


@pytest.mark.parametrize("name", ANNOTATOR_PAGES + MANAGER_PAGES)
def test_managers_reach_everything_in_their_project(client, project, manager, comparisons, name):
    client.force_login(manager)
    assert client.get(_url(name, project)).status_code == 200


@pytest.mark.parametrize("name", [n for n in ANNOTATOR_PAGES + MANAGER_PAGES if n != "home"])
def test_strangers_get_404_for_other_projects(client, project, outsider, name):
    client.force_login(outsider)
    assert client.get(_url(name, project)).status_code == 404


def test_staff_see_every_project(client, project, outsider):
    outsider.is_staff = True
    outsider.save()
    client.force_login(outsider)
    assert client.get(reverse("manage-settings", args=[project.slug])).status_code == 200
    assert project.name in client.get(reverse("home")).content.decode()


def test_admin_is_for_staff_only(client, annotator):
    client.force_login(annotator)
    assert client.get("/admin/").status_code == 302


def test_vote_and_skip_need_post_and_membership(client, project, annotator, outsider, comparisons):
    c = comparisons[0]
    url = reverse("vote", args=[project.slug, c.pk])
    client.force_login(annotator)
    assert client.get(url).status_code == 405
    client.force_login(outsider)
    assert client.post(url, {"choice": "a"}).status_code == 404
    assert client.post(reverse("skip", args=[project.slug, c.pk])).status_code == 404


def test_forms_need_csrf(project, annotator, comparisons):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(annotator)
    response = strict.post(reverse("vote", args=[project.slug, comparisons[0].pk]), {"choice": "a"})
    assert response.status_code == 403


API_ROUTES = [
    # method, route, who may call it, a valid body for POSTs
    ("get", "api-next", "annotator", None),
    ("post", "api-prompts", "manager", [{"prompt": "A new question?"}]),
    ("post", "api-completions", "manager", [{"prompt": "Q?", "checkpoint": "m", "text": "An answer."}]),
    ("get", "api-export", "manager", None),
]


@pytest.mark.parametrize("method,name,needs,body", API_ROUTES)
def test_api_routes_by_role(client, project, annotator, manager, outsider, comparisons, method, name, needs, body):
    import json

    url = reverse(name, args=[project.slug])

    def call(user=None):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=user)}"} if user else {}
        if method == "post":
            return client.post(url, data=json.dumps(body), content_type="application/json", **headers)
        return client.get(url, **headers)

    assert call().status_code == 401
    assert call(outsider).status_code == 404
    assert call(manager).status_code in (200, 201)
    assert call(annotator).status_code == (200 if needs == "annotator" else 403)
