"""A gold comparison looks exactly like any other in Chromium and in the API: the same markup, the
same attributes, the same JSON keys; only the texts differ."""
from __future__ import annotations

import json

import pytest

from annotate import gold, services
from annotate.models import Comparison, Membership
from annotate.tokens import token_create
from tests.browser.conftest import login
from tests.conftest import PASSWORD, make_comparisons

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The page's structure with texts, ids and per-pair values taken out: tag, classes, attribute names.
OUTLINE = """() => {
  const walk = (el) => [el.tagName, [...el.classList].join('.'),
    [...el.attributes].map(a => a.name).filter(n => n !== 'class').sort().join(','),
    [...el.children].map(walk)];
  return JSON.stringify(walk(document.querySelector('#pair')));
}"""


def test_gold_and_ordinary_pairs_are_indistinguishable(live_server, browser):
    project = services.project_create(slug="demo", name="Demo", guidelines="Be fair.")
    for name in ("ann", "bob"):
        services.user_with_role(project=project, username=name, password=PASSWORD, role=Membership.Role.ANNOTATOR)
    make_comparisons(project, 1)
    gold.gold_import(project=project, rows=[{"prompt": "Question 9 for demo?", "chosen": "Answer one (9)",
                                             "rejected": "Answer two (9)"}])
    seen = {}
    for name, rate in (("ann", 1.0), ("bob", 0.0)):  # the draw always, then never, says gold
        type(project).objects.filter(pk=project.pk).update(gold_rate=rate)
        context = browser.new_context()
        page = context.new_page()
        login(page, live_server, name, PASSWORD)
        page.goto(f"{live_server.url}/p/demo/compare/")
        shown = int(page.locator(".vote-form").get_attribute("data-comparison"))
        seen[name] = (Comparison.objects.get(pk=shown).state, page.evaluate(OUTLINE),
                      page.locator("#pair").inner_text())
        context.close()
    assert (seen["ann"][0], seen["bob"][0]) == ("gold", "open")
    assert seen["ann"][1] == seen["bob"][1]  # the same elements, classes and attributes, in the same order
    assert "gold" not in seen["ann"][2].lower()


def test_the_api_gives_gold_the_same_shape(client, live_server):
    project = services.project_create(slug="demo", name="Demo")
    user = services.user_with_role(project=project, username="ann", password=PASSWORD,
                                   role=Membership.Role.ANNOTATOR)
    make_comparisons(project, 1)
    gold.gold_import(project=project, rows=[{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=user)}"}
    shapes = []
    for rate in (1.0, 0.0):
        type(project).objects.filter(pk=project.pk).update(gold_rate=rate)
        body = client.get("/api/projects/demo/comparisons/next", **headers).json()
        shapes.append((sorted(body), sorted(body["a"]), sorted(body["b"])))
        client.post(f"/api/comparisons/{body['id']}/vote", data=json.dumps({"choice": "a"}),
                    content_type="application/json", **headers)
    assert shapes[0] == shapes[1]
    assert "gold" not in json.dumps(shapes)
