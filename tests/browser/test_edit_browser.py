"""Edit → preference in Chromium: by keyboard alone, and with JavaScript switched off."""
from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Comparison, Completion, Membership, Vote
from tests.browser.conftest import login
from tests.conftest import PASSWORD, make_comparisons

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def setup(transactional_db):
    project = services.project_create(slug="demo", name="Demo")
    user = services.user_with_role(project=project, username="ann", password=PASSWORD, role=Membership.Role.ANNOTATOR)
    make_comparisons(project, 3, texts=("An answer with a <b>tag</b>", "Another answer"))
    return project, user


def _edited(user, text: str) -> Completion:
    edit = Completion.objects.get(edited_by=user)
    assert edit.text == text and edit.checkpoint.name == "human-edit"
    pair = Comparison.objects.get(reason="edit")
    assert pair.state == "closed" and {pair.completion_a_id, pair.completion_b_id} == {edit.pk, edit.edited_from_id}
    vote = Vote.objects.get(comparison=pair, annotator=user)
    assert vote.winner_id == edit.pk
    return edit


def test_an_annotator_edits_the_better_answer_by_keyboard_alone(live_server, page, setup):
    _, user = setup
    login(page, live_server, "ann", PASSWORD)
    page.goto(f"{live_server.url}/p/demo/compare/")
    shown = int(page.locator(".vote-form").get_attribute("data-comparison"))
    page.keyboard.press("e")  # focus "Edit A"
    assert page.evaluate("document.activeElement.dataset.edit") == "a"
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-edit-form]")
    textarea = page.locator("textarea[name=text]")
    # The raw text (HTML and all), escaped into the textarea: what the annotator improves is what the model wrote.
    assert textarea.input_value().strip() == Comparison.objects.get(pk=shown).completion_a.text
    textarea.fill("A better answer, **improved**.")
    textarea.press("Control+Enter")
    page.wait_for_selector(".vote-form")  # back to the pairs, the next one shown
    assert int(page.locator(".vote-form").get_attribute("data-comparison")) != shown
    edit = _edited(user, "A better answer, **improved**.")
    assert Comparison.objects.get(pk=shown).completion_a_id == edit.edited_from_id
    assert Vote.objects.get(comparison_id=shown, annotator=user).choice == "a"  # the edit voted for A


def test_editing_works_without_javascript(live_server, browser, setup):
    _, user = setup
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    login(page, live_server, "ann", PASSWORD)
    page.goto(f"{live_server.url}/p/demo/compare/")
    page.click("[data-edit=b]")
    page.fill("textarea[name=text]", "B, made right.")
    page.click("[data-edit-save]")
    page.wait_for_selector(".vote-form")
    _edited(user, "B, made right.")
    context.close()
