"""The manager's console in a real browser, with a real Celery worker process.

A manager starts a reward-model run from the form, watches the progress bar move through htmx
polling until the worker finishes the run, then promotes a checkpoint on the leaderboard. A
screenshot of every console page is saved under docs/screenshots/ for the README.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.utils import timezone

from annotate import services
from annotate.models import Checkpoint, Membership
from rewardmodel.models import RewardModel
from tests.browser.conftest import login
from tests.conftest import PASSWORD
from tests.training.test_console import seed_project
from tests.training.test_console_leaderboard import battles
from tests.training.test_worker import worker  # noqa: F401 - the fixture: a worker process on the test database
from training.models import Promotion, TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
RUN_DEADLINE_S = 600


@pytest.fixture
def flywheel(transactional_db):
    """A project with a few weeks of votes, battles where ``cand`` clearly beats the incumbent ``base``, and runs."""
    project = services.project_create(slug="demo", name="Demo", guidelines="Pick the more helpful answer.")
    project.votes_per_comparison = 4
    project.retrain_threshold = 0  # only the run started from the form trains
    project.save()
    services.user_with_role(project=project, username="boss", password=PASSWORD, role=Membership.Role.MANAGER)
    data = seed_project(project, comparisons=120, voters=4, runs=14)
    base, cand, old = (data["checkpoints"][n] for n in ("base", "cand", "old"))
    Checkpoint.objects.filter(pk=cand.pk).update(parent=base)
    Checkpoint.objects.filter(pk=base.pk).update(parent=old)
    battles(project, base, old, ["a"] * 14 + ["b"] * 8 + ["tie"] * 3)
    battles(project, cand, old, ["a"] * 9 + ["b"] * 2, tag="more ")
    dpo = next(r for r in data["runs"] if r.kind == TrainingRun.Kind.DPO)
    TrainingRun.objects.filter(pk=dpo.pk).update(checkpoint_out=cand, state=TrainingRun.State.SUCCEEDED,
                                                 progress=1.0, finished_at=timezone.now())
    return project


def _shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_start_a_run_watch_it_finish_and_promote_a_checkpoint(live_server, page, flywheel, worker):  # noqa: F811
    console = f"{live_server.url}/p/demo/console"
    login(page, live_server, "boss", PASSWORD)

    # Start a reward-model run from the form, on the tiny backbone the worker can load offline.
    page.goto(f"{console}/runs/new/")
    page.fill("input[name=backbone]", str(worker / "tiny-bert"))
    # Enough epochs that the run outlasts several one-second polls on a fast CPU too (at 5 it
    # took under a second on an Intel Xeon with AMX, and the bar went from 0 straight to 100).
    page.fill("input[name=epochs]", "40")
    page.fill("input[name=batch_size]", "2")
    page.fill("input[name=max_length]", "64")
    page.fill("input[name=learning_rate]", "0.001")
    page.fill("input[name=reason]", "browser test")
    page.click("button[data-start]")
    page.wait_for_url(f"{console}/runs/*/")
    run = TrainingRun.objects.get(reason="browser test")
    assert run.config["epochs"] == 40.0 and run.kind == TrainingRun.Kind.REWARD_MODEL

    # Watch the progress bar: htmx swaps the panel every second in the same document.
    page.evaluate("window.__sameDocument = true")
    seen: list[int] = []
    deadline = time.monotonic() + RUN_DEADLINE_S
    state = "queued"
    while time.monotonic() < deadline:
        panel = page.locator("#run-live")
        state = panel.get_attribute("data-state")
        value = int(page.locator("[data-progress]").get_attribute("data-progress"))
        if not seen or seen[-1] != value:
            seen.append(value)
        if state in ("succeeded", "failed", "cancelled"):
            break
        page.wait_for_timeout(250)
    run.refresh_from_db()
    log = (worker / "worker.log").read_text()
    assert state == "succeeded", f"run ended {state} ({run.state}): {run.error}\n--- worker log ---\n{log[-3000:]}"
    assert page.evaluate("window.__sameDocument") is True  # updated by polling, never reloaded
    assert any(0 < v < 100 for v in seen), f"the bar never showed a value between 0 and 100: {seen}"
    assert seen[-1] == 100 and seen == sorted(seen)
    assert page.locator("#run-live[hx-trigger]").count() == 0  # polling stopped (286)
    assert page.locator("[data-output]").inner_text() == "reward model v4"
    assert page.locator("[data-worker]").inner_text() == run.worker != ""
    assert page.locator('svg.chart[aria-label="loss"]').count() == 1
    _shoot(page, "run-detail.png")

    page.goto(f"{console}/runs/")
    assert page.locator(f'tr[data-run="{run.pk}"] .state-succeeded').count() == 1
    _shoot(page, "runs.png")

    page.goto(f"{console}/reward-models/")
    rm = RewardModel.objects.get(project=flywheel, version=4)
    assert rm.votes > 0 and page.locator('tr[data-version="4"]').count() == 1
    _shoot(page, "reward-models.png")

    # Promote the candidate whose interval clears the incumbent's.
    page.goto(f"{console}/leaderboard/")
    assert page.locator('tr[data-checkpoint="cand"]').get_attribute("data-state") == "candidate"
    assert page.locator('[data-override="old"]').count() == 1  # the weaker one would need a reason
    page.click('button[data-promote="cand"]')
    page.wait_for_selector('tr[data-checkpoint="cand"][data-state="incumbent"]')
    assert "cand is now the incumbent" in page.locator(".messages").inner_text()
    promotion = Promotion.objects.get()
    assert promotion.checkpoint.name == "cand" and promotion.previous.name == "base"
    assert promotion.user.username == "boss" and promotion.override_reason == ""
    assert Checkpoint.objects.get(project=flywheel, name="base").state == Checkpoint.State.RETIRED
    _shoot(page, "leaderboard.png")

    page.goto(f"{console}/datasets/")
    page.fill("input[name=note]", "after the browser test")
    page.click("button[data-freeze]")
    page.wait_for_selector(".messages li.success")
    assert "frozen" in page.locator(".messages").inner_text()
    _shoot(page, "datasets.png")

    page.goto(f"{console}/annotators/")
    assert page.locator("tr[data-annotator]").count() == 5  # four voters and the battle voter
    _shoot(page, "annotators.png")

    page.goto(f"{console}/")
    assert page.locator('[data-kpi="incumbent"]').inner_text() == "cand"
    _shoot(page, "dashboard.png")


def test_without_javascript_a_running_run_page_refreshes_itself(live_server, browser, transactional_db):
    project = services.project_create(slug="quiet", name="Quiet")
    services.user_with_role(project=project, username="boss", password=PASSWORD, role=Membership.Role.MANAGER)
    run = TrainingRun.objects.create(project=project, kind=TrainingRun.Kind.REWARD_MODEL, state=TrainingRun.State.RUNNING,
                                     progress=0.3, step=3, total_steps=10)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    login(page, live_server, "boss", PASSWORD)
    url = f"{live_server.url}/p/quiet/console/runs/{run.pk}/"
    loads = []
    page.on("request", lambda request: loads.append(request.url) if request.url == url else None)
    page.goto(url)
    assert page.locator("[data-progress]").get_attribute("data-progress") == "30"
    TrainingRun.objects.filter(pk=run.pk).update(progress=0.8, step=8)
    page.wait_for_selector('[data-progress="80"]', timeout=15_000)  # the <noscript> refresh reloaded the page
    assert len(loads) >= 2
    TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.SUCCEEDED, progress=1.0, finished_at=timezone.now())
    page.wait_for_selector('#run-live[data-state="succeeded"]', timeout=15_000)
    settled = len(loads)
    page.wait_for_timeout(3_000)
    assert len(loads) == settled  # a finished run's page stops refreshing
    context.close()
