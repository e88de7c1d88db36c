"""The annotator's page in a real browser: keyboard voting, htmx swaps, untrusted output, no-JS."""
from __future__ import annotations

from pathlib import Path

import pytest

from annotate import services
from annotate.models import Membership, Vote
from tests.browser.conftest import login
from tests.conftest import PASSWORD, make_comparisons

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def setup(transactional_db):
    project = services.project_create(slug="demo", name="Demo", guidelines="Be *fair*.")
    user = services.user_with_role(project=project, username="ann", password=PASSWORD, role=Membership.Role.ANNOTATOR)
    return project, user


def test_keyboard_alone_votes_three_comparisons_without_page_loads(live_server, page, setup):
    project, user = setup
    make_comparisons(project, 4, texts=("**Bold** answer with `code`", "Plain answer"))
    login(page, live_server, "ann", PASSWORD)
    page.goto(f"{live_server.url}/p/demo/compare/")
    page.evaluate("window.__sameDocument = true")  # survives htmx swaps, lost on a full load
    seen = []
    for key in ["1", "2", "3"]:
        form = page.locator(".vote-form")
        comparison_id = form.get_attribute("data-comparison")
        seen.append(comparison_id)
        page.keyboard.press(key)
        page.wait_for_function(
            "id => { const f = document.querySelector('.vote-form'); return f && f.dataset.comparison !== id; }",
            arg=comparison_id,
        )
    assert page.evaluate("window.__sameDocument") is True
    assert len(set(seen)) == 3
    votes = list(Vote.objects.filter(annotator=user).order_by("id").values_list("comparison_id", "choice"))
    assert votes == [(int(seen[0]), "a"), (int(seen[1]), "b"), (int(seen[2]), "tie")]
    assert all(v.time_spent_ms is not None for v in Vote.objects.filter(annotator=user))
    assert page.locator("[data-votes-today]").inner_text() == "3"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)
    page.keyboard.press("1")
    page.wait_for_selector("[data-nothing-left]")


def test_model_output_with_html_runs_nothing(live_server, page, setup):
    project, _ = setup
    hostile = (
        '<script>window.__xss = "script"</script>'
        '<img src=x onerror="window.__xss = \'img\'">'
        "[click](javascript:window.__xss='link')"
    )
    make_comparisons(project, 1, texts=(hostile, '<svg onload="window.__xss=\'svg\'"></svg>'))
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, live_server, "ann", PASSWORD)
    page.goto(f"{live_server.url}/p/demo/compare/")
    page.wait_for_selector(".vote-form")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    assert page.locator("[data-response] script, [data-response] img, [data-response] svg").count() == 0
    text = page.locator(".responses").inner_text()
    assert '<script>window.__xss = "script"</script>' in text  # shown as text, not interpreted


def test_everything_works_without_javascript(live_server, browser, setup):
    project, user = setup
    make_comparisons(project, 2)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    login(page, live_server, "ann", PASSWORD)
    page.goto(f"{live_server.url}/p/demo/compare/")
    first = page.locator(".vote-form").get_attribute("data-comparison")
    page.click("button[value=b]")
    page.wait_for_load_state()
    assert page.locator(".vote-form").get_attribute("data-comparison") != first
    page.click("button.skip")
    page.wait_for_selector("[data-nothing-left]")
    assert Vote.objects.filter(annotator=user, choice="b").count() == 1
    context.close()


def test_responses_stack_on_narrow_screens(live_server, browser, setup):
    project, _ = setup
    make_comparisons(project, 1)
    context = browser.new_context(viewport={"width": 420, "height": 900})
    page = context.new_page()
    login(page, live_server, "ann", PASSWORD)
    page.goto(f"{live_server.url}/p/demo/compare/")
    a = page.locator("[aria-label='Response A']").bounding_box()
    b = page.locator("[aria-label='Response B']").bounding_box()
    assert b["y"] >= a["y"] + a["height"] - 1  # B sits below A
    context.close()
