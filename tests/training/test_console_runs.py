"""Console run pages: the live progress panel, the start form and its validation, cancel and retry."""
from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate import services
from annotate.models import Checkpoint, Snapshot
from rewardmodel.models import RewardModel
from training.console.selectors import run_view
from training.models import RunStep, TrainingRun
from training.runs import run_create

Kind, State = TrainingRun.Kind, TrainingRun.State


@pytest.fixture
def run(project):
    return run_create(project=project, kind=Kind.REWARD_MODEL, config={"epochs": 2.0}, reason="testing", enqueue=False)


def _detail(project, run):
    return reverse("console-run", args=[project.slug, run.pk])


def test_the_progress_panel_polls_every_second_and_stops_with_286_when_the_run_ends(client, project, manager, run):
    client.force_login(manager)
    page = client.get(_detail(project, run)).content.decode()
    assert "<html" in page and 'hx-trigger="every 1s"' in page
    assert '<noscript><meta http-equiv="refresh"' in page  # without JavaScript the page refreshes itself
    TrainingRun.objects.filter(pk=run.pk).update(state=State.RUNNING, progress=0.42, step=42, total_steps=100)
    fragment = client.get(_detail(project, run), HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    text = fragment.content.decode()
    assert "<html" not in text and 'data-progress="42"' in text and 'hx-trigger="every 1s"' in text
    TrainingRun.objects.filter(pk=run.pk).update(state=State.SUCCEEDED, progress=1.0, finished_at=timezone.now())
    last = client.get(_detail(project, run), HTTP_HX_REQUEST="true")
    assert last.status_code == 286  # htmx stops polling, then swaps in the final state
    text = last.content.decode()
    assert 'data-progress="100"' in text and "hx-trigger" not in text and "data-retry" in text
    page = client.get(_detail(project, run)).content.decode()
    assert "hx-trigger" not in page and "http-equiv" not in page


def test_the_run_page_shows_config_log_timings_inputs_outputs_and_charts(client, project, manager, run):
    snapshot = Snapshot.objects.create(project=project, uri="file:///x.jsonl", count=10, votes=20, sha256="ab" * 32)
    rm = RewardModel.objects.create(project=project, version=1, backbone="tiny", snapshot=snapshot, artifact_uri="file:///x")
    TrainingRun.objects.filter(pk=run.pk).update(
        state=State.SUCCEEDED, snapshot=snapshot, reward_model_out=rm, worker="gpu-host-7",
        log_tail="step 1\n<script>alert('log')</script>", started_at=timezone.now(), finished_at=timezone.now(),
        outputs={"artifact_uri": "file:///x"},
    )
    RunStep.objects.bulk_create([RunStep(run=run, step=s, metrics={"loss": 1 / s, "accuracy": 0.5 + s / 100}) for s in range(1, 20)])
    client.force_login(manager)
    html = client.get(_detail(project, run)).content.decode()
    assert "&quot;epochs&quot;: 2.0" in html  # the configuration, as JSON
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;log&#x27;)" in html
    assert "gpu-host-7" in html and "Waited in the queue" in html
    assert f"#snapshot-{snapshot.pk}" in html and "reward model v1" in html and "file:///x" in html
    assert html.count('<svg class="chart"') == 2 and 'aria-label="loss"' in html


def test_long_runs_are_thinned_in_the_database_for_their_charts(project, run):
    RunStep.objects.bulk_create([RunStep(run=run, step=s, metrics={"loss": 1.0}) for s in range(1, 1001)])
    TrainingRun.objects.filter(pk=run.pk).update(step=1000, total_steps=1000)
    run.refresh_from_db()
    points = run_view(run).metrics["loss"]
    assert 250 <= len(points) <= 301 and points[-1][0] == 1000


def _start(client, project, data):
    return client.post(reverse("console-run-new", args=[project.slug]), data)


RM = {"kind": "reward_model", "backbone": "tiny-bert", "epochs": "2", "batch_size": "8", "max_length": "128",
      "learning_rate": "0.0001", "loss": "bt", "eval_fraction": "0.2", "extra": "", "reason": ""}


def test_the_form_starts_a_reward_model_run_with_defaults_shown(client, project, manager, settings):
    settings.REWARD_BACKBONE = "all-minilm-l6-v2"
    client.force_login(manager)
    form = client.get(reverse("console-run-new", args=[project.slug])).content.decode()
    assert 'value="all-minilm-l6-v2"' in form and 'name="epochs"' in form and 'value="1.0"' in form
    assert '<option value="auto" selected>' in form and '<option value="qlora">' in form  # mode, left empty: auto
    response = _start(client, project, {**RM, "extra": '{"seed": 3}'})
    run = TrainingRun.objects.get(project=project)
    assert response.status_code == 302 and response["Location"] == _detail(project, run)
    assert run.kind == Kind.REWARD_MODEL and run.state == State.QUEUED
    assert run.config == {"backbone": "tiny-bert", "epochs": 2.0, "batch_size": 8, "max_length": 128,
                          "learning_rate": 0.0001, "loss": "bt", "eval_fraction": 0.2, "mode": "auto", "parallel": "auto",
                          "seed": 3}
    assert run.reason == "started from the console by manager"


def test_the_form_chooses_how_many_gpus_a_run_uses(client, project, manager):
    client.force_login(manager)
    form = client.get(reverse("console-run-new", args=[project.slug])).content.decode()
    assert 'name="world_size"' in form
    assert _start(client, project, {**RM, "world_size": "4"}).status_code == 302
    assert TrainingRun.objects.get(project=project).config["world_size"] == 4
    page = _start(client, project, {**RM, "world_size": "0"}).content.decode()
    assert "Ensure this value is greater than or equal to 1." in page
    # How the GPUs hold the model: sharded full fine-tuning, or a copy on each.
    assert 'name="parallel"' in form
    assert _start(client, project, {**RM, "world_size": "2", "parallel": "shard"}).status_code == 302
    assert TrainingRun.objects.latest("pk").config["parallel"] == "shard"
    page = _start(client, project, {**RM, "parallel": "shard", "mode": "lora"}).content.decode()
    assert "parallel=&#x27;shard&#x27; shards full fine-tuning only" in page


@pytest.mark.parametrize("change,message", [
    ({"epochs": "0"}, "Ensure this value is greater than or equal to 0.01."),
    ({"batch_size": "many"}, "Enter a whole number."),
    ({"extra": "{oops"}, "This is not valid JSON"),
    ({"extra": "[1]"}, "Give a JSON object"),
    ({"extra": '{"epochs": 3}'}, "Set epochs in the fields above, not here."),
    ({"extra": '{"colour": "blue"}'}, "unknown reward-model settings: colour"),
    ({"extra": '{"ensemble_size": 0}'}, "ensemble_size must be &gt;= 1"),
])
def test_bad_values_get_a_clear_message_and_start_nothing(client, project, manager, change, message):
    client.force_login(manager)
    response = _start(client, project, {**RM, **change})
    assert response.status_code == 200 and message in response.content.decode()
    assert not TrainingRun.objects.exists()


@pytest.fixture
def lineup(project):
    base = services.checkpoint_get_or_create(project=project, name="base", state=Checkpoint.State.INCUMBENT)
    cand = services.checkpoint_get_or_create(project=project, name="cand")
    snapshot = Snapshot.objects.create(project=project, uri="file:///s.jsonl", count=5, votes=5, sha256="0" * 64)
    rm = RewardModel.objects.create(project=project, version=1, backbone="b", snapshot=snapshot, artifact_uri="file:///r")
    return base, cand, snapshot, rm


def test_dpo_and_ppo_start_from_the_form_with_their_inputs(client, project, manager, lineup):
    base, _, snapshot, rm = lineup
    client.force_login(manager)
    form = client.get(reverse("console-run-new", args=[project.slug]) + "?kind=dpo").content.decode()
    assert f'<option value="{base.pk}" selected>' in form and f'<option value="{snapshot.pk}" selected>' in form
    _start(client, project, {"kind": "dpo", "checkpoint": base.pk, "snapshot": snapshot.pk, "beta": "0.2",
                             "loss": "ipo", "learning_rate": "1e-6", "epochs": "1", "batch_size": "4",
                             "mode": "lora"})
    _start(client, project, {"kind": "ppo", "checkpoint": base.pk, "reward_model": rm.pk, "kl_coef": "0.1",
                             "learning_rate": "1e-5", "steps": "20", "batch_size": "8"})
    dpo = TrainingRun.objects.get(kind=Kind.DPO)
    assert (dpo.checkpoint_in, dpo.snapshot, dpo.state) == (base, snapshot, State.QUEUED)
    assert dpo.config == {"beta": 0.2, "loss": "ipo", "learning_rate": 1e-6, "epochs": 1.0, "batch_size": 4,
                          "mode": "lora", "parallel": "auto"}
    assert dpo.reason == "started from the console by manager"
    ppo = TrainingRun.objects.get(kind=Kind.PPO)
    assert (ppo.checkpoint_in, ppo.reward_model_in) == (base, rm)
    assert ppo.config["kl_coef"] == 0.1 and ppo.config["steps"] == 20 and ppo.config["mode"] == "auto"


def test_the_form_starts_a_generation_battle(client, project, manager, lineup):
    base, cand, _, _ = lineup
    client.force_login(manager)
    bad = _start(client, project, {"kind": "generation", "checkpoint": cand.pk, "rivals": [cand.pk], "prompts": "8",
                                   "temperature": "0.7", "top_p": "0.9", "max_new_tokens": "32", "seed": "1"})
    assert "cand is the candidate; it cannot also be its own rival." in bad.content.decode()
    _start(client, project, {"kind": "generation", "checkpoint": cand.pk, "rivals": [base.pk], "prompts": "8",
                             "temperature": "0.5", "top_p": "0.9", "max_new_tokens": "32", "seed": "1"})
    run = TrainingRun.objects.get(kind=Kind.GENERATION)
    assert run.config == {"checkpoints": [cand.pk, base.pk], "prompts": 8, "temperature": 0.5, "top_p": 0.9,
                          "max_new_tokens": 32, "seed": 1}
    assert run.checkpoint_in == cand


def test_cancel_stops_a_queued_run_now_and_a_running_one_at_its_next_step(client, project, manager, run):
    client.force_login(manager)
    client.post(reverse("console-run-cancel", args=[project.slug, run.pk]))
    run.refresh_from_db()
    assert run.state == State.CANCELLED
    other = run_create(project=project, kind=Kind.REWARD_MODEL, enqueue=False)
    TrainingRun.objects.filter(pk=other.pk).update(state=State.RUNNING)
    client.post(reverse("console-run-cancel", args=[project.slug, other.pk]))
    other.refresh_from_db()
    assert other.state == State.RUNNING and other.cancel_requested
    assert "stopping at its next step" in client.get(_detail(project, other)).content.decode()


def test_retry_starts_the_same_run_again_once_it_has_finished(client, project, manager, run, lineup):
    client.force_login(manager)
    response = client.post(reverse("console-run-retry", args=[project.slug, run.pk]), follow=True)
    assert "still queued; cancel it before retrying" in response.content.decode()
    TrainingRun.objects.filter(pk=run.pk).update(state=State.FAILED, error="boom")
    response = client.post(reverse("console-run-retry", args=[project.slug, run.pk]))
    retry = TrainingRun.objects.exclude(pk=run.pk).get()
    assert response["Location"] == _detail(project, retry)
    assert retry.kind == Kind.REWARD_MODEL and retry.config == {"epochs": 2.0} and retry.reason == f"retry of run {run.pk}"
    base, cand, _, _ = lineup
    battle = run_create(project=project, kind=Kind.GENERATION, enqueue=False,
                        config={"checkpoints": [cand.pk, base.pk], "prompts": 4, "temperature": 0.3})
    TrainingRun.objects.filter(pk=battle.pk).update(state=State.SUCCEEDED)
    client.post(reverse("console-run-retry", args=[project.slug, battle.pk]))
    again = TrainingRun.objects.filter(kind=Kind.GENERATION).exclude(pk=battle.pk).get()
    assert again.config == {"checkpoints": [cand.pk, base.pk], "prompts": 4, "temperature": 0.3}


def test_a_run_of_another_project_is_not_found(client, project, manager):
    other = services.project_create(slug="other", name="Other")
    foreign = run_create(project=other, kind=Kind.REWARD_MODEL, enqueue=False)
    client.force_login(manager)
    assert client.get(reverse("console-run", args=[project.slug, foreign.pk])).status_code == 404
    assert client.post(reverse("console-run-cancel", args=[project.slug, foreign.pk])).status_code == 404
