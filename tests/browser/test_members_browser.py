"""The Members page in a real browser, by keyboard alone: a manager adds a member and removes them."""
from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Membership
from tests.browser.conftest import login
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def tab_to(page, test: str, *, limit: int = 60) -> None:
    """Press Tab until ``test`` (a JS expression on ``el``, the focused element) holds."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return !!({test}); }})()"):
            return
    raise AssertionError(f"Tab never reached an element where {test}")


def test_a_manager_adds_and_removes_a_member_with_the_keyboard(live_server, page, transactional_db,
                                                                 django_user_model):
    project = services.project_create(slug="team", name="Team")
    services.user_with_role(project=project, username="mia", password=PASSWORD, role=Membership.Role.MANAGER)
    django_user_model.objects.create_user(username="bob", password=PASSWORD)
    login(page, live_server, "mia", PASSWORD)
    page.goto(f"{live_server.url}/p/team/manage/members/")

    tab_to(page, "el.name === 'user'")
    page.keyboard.type("bob")
    tab_to(page, "el.name === 'role' && el.id === 'id_role'")
    page.keyboard.press("ArrowDown")  # annotator -> manager
    tab_to(page, "el.type === 'submit' && el.textContent.trim() === 'Add member'")
    page.keyboard.press("Enter")
    page.wait_for_selector('[data-member="bob"][data-role="manager"]')
    assert "Added bob as manager." in page.inner_text("main")
    assert Membership.objects.get(project=project, user__username="bob").role == "manager"

    tab_to(page, "el.getAttribute('aria-label') === 'Remove bob'")
    page.keyboard.press("Space")
    page.wait_for_selector("text=Removed bob from Team.")
    assert not Membership.objects.filter(project=project, user__username="bob").exists()
