"""The whole flywheel through a real Celery worker process.

votes → snapshot → reward model → DPO → checkpoint → generation → new battle comparisons
in the queue. ``make test`` runs it on SQLite with the file-system broker; ``.ci/run``
on PostgreSQL with Redis.
"""
from __future__ import annotations

import time

import pytest

from annotate import services
from annotate.models import Checkpoint, Comparison, Membership
from annotate.queue import comparison_next
from tests.conftest import PASSWORD
from tests.tiny import save_tiny_llama
from tests.training.test_reward_runs import vote_by_rule
from tests.training.test_worker import worker  # noqa: F401  (the fixture)
from training.loop import loop_settings
from training.models import TrainingRun


def wait_for(predicate, *, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        failed = TrainingRun.objects.filter(state="failed").first()
        if failed:
            pytest.fail(f"run {failed.pk} ({failed.kind}) failed: {failed.error[-2000:]}\n{log()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; runs: "
                f"{list(TrainingRun.objects.values_list('kind', 'state'))}\n{log()[-3000:]}")


@pytest.mark.django_db(transaction=True)
def test_the_loop_turns_by_itself_on_a_real_worker(worker, tmp_path):  # noqa: F811
    project = services.project_create(slug="flywheel", name="Flywheel")
    project.retrain_threshold = 24
    project.save()
    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    Checkpoint.objects.create(project=project, name="base", uri=str(policy), state=Checkpoint.State.INCUMBENT)
    settings = loop_settings(project)
    settings.enabled = True
    settings.method = "dpo"
    settings.battle_prompts = 6
    settings.policy_config = {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3}
    settings.sampling = {"max_new_tokens": 8, "temperature": 1.0}
    settings.save()
    annotator = services.user_with_role(project=project, username="people", password=PASSWORD,
                                        role=Membership.Role.ANNOTATOR)

    vote_by_rule(project, annotator, 24)  # crosses the threshold: the loop starts

    log = lambda: (worker / "worker.log").read_text()  # noqa: E731
    wait_for(lambda: TrainingRun.objects.filter(kind="generation", state="succeeded").exists(),
             timeout=420, what="the battle generation", log=log)
    rm_run, dpo_run, gen_run = (TrainingRun.objects.get(kind=k) for k in ("reward_model", "dpo", "generation"))
    assert rm_run.state == dpo_run.state == "succeeded"
    candidate = dpo_run.checkpoint_out
    assert candidate.parent.name == "base" and candidate.state == "candidate"
    assert candidate.meta["snapshot_sha256"] == rm_run.snapshot.sha256 == dpo_run.snapshot.sha256
    assert gen_run.checkpoint_in == candidate
    battles = Comparison.objects.filter(project=project, reason="battle", state="open")
    assert battles.count() == gen_run.outputs["comparisons"] > 0
    # The battle outranks everything else in the queue: the next person sees it first.
    fresh = services.user_with_role(project=project, username="fresh", password=PASSWORD,
                                    role=Membership.Role.ANNOTATOR)
    assert comparison_next(project=project, annotator=fresh).reason == "battle"
