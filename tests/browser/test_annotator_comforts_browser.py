"""Undo, strength after the choice, the guidelines panel and the flag form, in Chromium: by keyboard
alone with htmx (no page load), and with JavaScript switched off."""
from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Comparison, Flag, Membership, Vote, WithdrawnVote
from tests.browser.conftest import login
from tests.conftest import PASSWORD, make_comparisons

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def setup(transactional_db):
    project = services.project_create(slug="demo", name="Demo", guidelines="## Rules\nPrefer the *honest* answer.")
    user = services.user_with_role(project=project, username="ann", password=PASSWORD, role=Membership.Role.ANNOTATOR)
    make_comparisons(project, 4)
    return project, user


def _shown(page) -> str:
    return page.locator(".vote-form").get_attribute("data-comparison")


def _wait_for_change(page, comparison_id: str) -> None:
    page.wait_for_function(
        "id => { const f = document.querySelector('.vote-form'); return f && f.dataset.comparison !== id; }",
        arg=comparison_id,
    )


def test_keyboard_votes_then_strength_then_undo_then_flag_without_a_page_load(live_server, page, setup):
    project, user = setup
    login(page, live_server, "ann", PASSWORD)
    page.goto(f"{live_server.url}/p/demo/compare/")
    page.evaluate("window.__sameDocument = true")  # survives htmx swaps, lost on a full load

    first = _shown(page)
    page.keyboard.press("2")  # B is better: recorded at once
    _wait_for_change(page, first)
    assert page.locator("[data-last-vote]").inner_text().startswith("Recorded: B is better.")
    page.keyboard.press("6")  # ...and then: clearly better
    page.wait_for_selector("[data-last-vote][data-has-strength]")
    assert "B is better, clearly better." in page.locator("[data-last-vote]").inner_text()
    assert list(Vote.objects.filter(annotator=user).values_list("comparison_id", "choice", "strength")) == [
        (int(first), "b", 2)]

    page.keyboard.press("z")  # undo: the same pair is back, the vote is gone
    page.wait_for_function("id => document.querySelector('.vote-form').dataset.comparison === id", arg=first)
    assert "was undone" in page.locator("#pair .messages").inner_text()
    assert not Vote.objects.filter(annotator=user).exists()
    assert WithdrawnVote.objects.get().strength == 2

    page.keyboard.press("g")  # the guidelines open beside the pair
    panel = page.locator("[data-guidelines]")
    assert panel.get_attribute("open") is not None and "Prefer the honest answer." in panel.inner_text()

    page.keyboard.press("f")  # the flag form opens with its first reason focused
    assert page.evaluate("document.activeElement.name") == "reason"
    page.keyboard.press("ArrowDown")  # radio group: the second reason, "harmful"
    page.keyboard.press("Tab")
    page.keyboard.type("It gives dangerous advice.")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    _wait_for_change(page, first)
    assert page.evaluate("window.__sameDocument") is True
    flag = Flag.objects.get()
    assert (flag.comparison_id, flag.reason, flag.note) == (int(first), "harmful", "It gives dangerous advice.")
    assert Comparison.objects.get(pk=int(first)).state == Comparison.State.FLAGGED


def test_undo_strength_and_flag_work_without_javascript(live_server, browser, setup):
    project, user = setup
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(15_000)
    login(page, live_server, "ann", PASSWORD)
    page.goto(f"{live_server.url}/p/demo/compare/")
    first = _shown(page)
    page.click("button[name=choice][value=a]")
    page.wait_for_selector("[data-last-vote]")
    page.click("[data-last-vote] button[name=strength][value='3']")
    page.wait_for_selector("[data-last-vote][data-has-strength]")
    assert Vote.objects.get(annotator=user).strength == 3
    page.click("[data-undo]")
    page.wait_for_selector(f".vote-form[data-comparison='{first}']")
    assert not Vote.objects.filter(annotator=user).exists()
    page.click("[data-flag] summary")
    page.check("input[name=reason][value=broken]")
    page.click("[data-flag] button[type=submit]")
    page.wait_for_selector(".messages")
    assert _shown(page) != first
    assert Flag.objects.get().reason == "broken"
    context.close()
