"""One way to start a run: the console, the API, the commands and the loop reach ``run_start`` with one set of defaults."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotate import services
from annotate.models import Checkpoint, Snapshot
from annotate.tokens import token_create
from annotate.votes import vote_record
from rewardmodel.models import RewardModel
from tests.conftest import make_comparisons
from training import configs
from training.generation import settings_of
from training.jobs import JOBS
from training.loop import battle_start, loop_settings, policy_start, retrain_if_due
from training.models import LoopSettings, TrainingRun
from training.starts import run_start

Kind = TrainingRun.Kind


@pytest.fixture
def lineup(project):
    """An incumbent to improve, a candidate to battle, a snapshot and a published reward model."""
    base = services.checkpoint_get_or_create(project=project, name="base", uri="smollm2",
                                             state=Checkpoint.State.INCUMBENT)
    cand = services.checkpoint_get_or_create(project=project, name="cand", uri="smollm2")
    snapshot = Snapshot.objects.create(project=project, uri="file:///s.jsonl", count=5, votes=5, sha256="0" * 64)
    rm = RewardModel.objects.create(project=project, version=1, backbone="b", snapshot=snapshot,
                                    artifact_uri="file:///r")
    return base, cand, snapshot, rm


def api_start(client, manager, body):
    token = token_create(user=manager)
    return client.post("/api/projects/demo/runs", data=json.dumps(body), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {token}")


def effective(run: TrainingRun) -> dict:
    """The settings the run's job will use: the one parser over the row's config."""
    if run.kind == Kind.REWARD_MODEL:
        return vars(configs.reward_config(run.config))
    if run.kind == Kind.DPO:
        return vars(configs.dpo_config(run.config, model="m"))
    if run.kind == Kind.PPO:
        return {**vars(configs.ppo_config(run.config, model="m", reward="r")),
                "prompts": configs.ppo_prompt_limit(run.config)}
    return configs.generation_settings(settings_of(run.config))


class _FormValues(HTMLParser):
    """What a browser submits for a form left as it was rendered: inputs, selected options, textareas."""

    def __init__(self):
        super().__init__()
        self.values: dict[str, list[str]] = {}
        self._select = self._textarea = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("name") and attrs.get("type") not in ("submit", "checkbox", "radio"):
            self.values.setdefault(attrs["name"], []).append(attrs.get("value") or "")
        elif tag == "input" and "checked" in attrs:
            self.values.setdefault(attrs["name"], []).append(attrs.get("value") or "on")
        elif tag == "select":
            self._select = attrs["name"]
            self.values.setdefault(self._select, [])
        elif tag == "option" and self._select and "selected" in attrs:
            self.values[self._select].append(attrs.get("value") or "")
        elif tag == "textarea":
            self._textarea = attrs["name"]
            self.values[self._textarea] = [""]

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.values[self._textarea][0] += data.strip()


def _run_inputs(run: TrainingRun) -> tuple:
    return (run.checkpoint_in_id, run.snapshot_id, run.reward_model_in_id, run.config.get("checkpoints"))


@pytest.mark.parametrize("kind", Kind.values)
def test_a_run_started_from_the_untouched_console_form_is_the_run_the_api_starts_with_nothing_given(
    client, project, manager, lineup, kind
):
    """The same "start a run" gives the same run, clicked in the console or sent to the API."""
    client.force_login(manager)
    page = client.get(reverse("console-run-new", args=[project.slug]) + f"?kind={kind}").content.decode()
    form = _FormValues()
    form.feed(page.split('class="stacked start-run"', 1)[1].split("</form>", 1)[0])
    response = client.post(reverse("console-run-new", args=[project.slug]), form.values)
    assert response.status_code == 302, response.content.decode()[-2000:]
    from_console = TrainingRun.objects.get(kind=kind)
    response = api_start(client, manager, {"kind": kind})
    assert response.status_code == 202, response.content
    from_api = TrainingRun.objects.get(pk=response.json()["id"])
    assert effective(from_console) == effective(from_api)
    assert _run_inputs(from_console) == _run_inputs(from_api)
    expected = {Kind.REWARD_MODEL: (None, None, None, None), Kind.DPO: (lineup[0].pk, lineup[2].pk, None, None),
                Kind.PPO: (lineup[0].pk, None, lineup[3].pk, None),
                Kind.GENERATION: (lineup[1].pk, None, None, [lineup[1].pk, lineup[0].pk])}
    assert _run_inputs(from_api) == expected[kind]


def test_the_unified_defaults_are_the_cpu_sized_ones(settings):
    settings.REWARD_BACKBONE = "all-minilm-l6-v2"
    rm, dpo, ppo = (configs.run_defaults(k) for k in (Kind.REWARD_MODEL, Kind.DPO, Kind.PPO))
    assert (rm["learning_rate"], rm["backbone"], rm["max_length"]) == (1e-4, "all-minilm-l6-v2", 384)
    assert (dpo["learning_rate"], dpo["batch_size"], dpo["max_length"]) == (5e-6, 4, 512)
    assert (ppo["steps"], ppo["batch_size"], ppo["mini_batch_size"]) == (20, 8, 4)
    assert configs.run_defaults(Kind.GENERATION)["prompts"] == LoopSettings._meta.get_field("battle_prompts").default


def test_the_loop_and_retraining_start_runs_with_the_same_defaults(
    project, annotator, lineup, django_capture_on_commit_callbacks
):
    base, cand, snapshot, rm = lineup
    policy = policy_start(project=project, reason="loop", enqueue=False)
    assert (policy.kind, policy.checkpoint_in, policy.snapshot, policy.config) == (Kind.DPO, base, snapshot, {})
    assert effective(policy)["learning_rate"] == configs.run_defaults(Kind.DPO)["learning_rate"]
    settings = loop_settings(project)
    settings.method = LoopSettings.Method.PPO
    settings.save()
    ppo = policy_start(project=project, reason="loop", enqueue=False)
    assert (ppo.kind, ppo.reward_model_in, effective(ppo)["steps"]) == (Kind.PPO, rm, 20)
    battle = battle_start(project=project, candidate=cand, reason="loop", enqueue=False)
    assert battle.config == {"checkpoints": [cand.pk, base.pk], "prompts": 48}
    assert effective(battle) == configs.run_defaults(Kind.GENERATION)

    project.retrain_threshold = 1
    project.save()
    comparison = make_comparisons(project, 1)[0]
    with django_capture_on_commit_callbacks(execute=True):
        vote_record(comparison_id=comparison.pk, annotator=annotator, choice="a")
    retrain = TrainingRun.objects.get(kind=Kind.REWARD_MODEL)
    assert retrain.config == {} and retrain.reason.endswith("new votes since the last reward model")
    assert retrain_if_due(project_id=project.pk) is None  # one pending at most


def test_the_api_names_inputs_and_refuses_bad_ones_with_a_clear_400(client, project, manager, lineup):
    base, cand, snapshot, rm = lineup
    ok = api_start(client, manager, {"kind": "ppo", "checkpoint": "cand", "reward_model": 1, "config": {"steps": 3}})
    assert ok.status_code == 202
    run = TrainingRun.objects.get(pk=ok.json()["id"])
    assert (run.checkpoint_in, run.reward_model_in, run.config) == (cand, rm, {"steps": 3})
    ok = api_start(client, manager, {"kind": "generation", "checkpoint": "cand", "rivals": [], "prompts": 5})
    run = TrainingRun.objects.get(pk=ok.json()["id"])
    assert run.config == {"checkpoints": [cand.pk], "prompts": 5}
    refusals = {
        "checkpoint named 'nope'": {"kind": "dpo", "checkpoint": "nope"},
        "no snapshot 999": {"kind": "dpo", "snapshot": 999},
        "no published reward model v7": {"kind": "ppo", "reward_model": 7},
        "checkpoint must be a checkpoint name": {"kind": "dpo", "checkpoint": 3},
        "rivals must be a list of checkpoint names": {"kind": "generation", "rivals": "base"},
        "unknown DPO settings: lr": {"kind": "dpo", "config": {"lr": 1}},
        "prompts must be a whole number": {"kind": "generation", "prompts": "all"},
        "temperature must be a number": {"kind": "generation", "config": {"temperature": [1]}},
        "its own rival": {"kind": "generation", "checkpoint": "base", "rivals": ["base"]},
        "unknown fields colour": {"kind": "dpo", "colour": "red"},
        "a reward model run takes no checkpoint": {"kind": "reward_model", "checkpoint": "base"},
        "a PPO run takes no snapshot": {"kind": "ppo", "snapshot": snapshot.pk},
        "a DPO run takes no reward_model or rivals": {"kind": "dpo", "reward_model": 1, "rivals": ["cand"]},
        "a rival is named twice": {"kind": "generation", "checkpoint": "cand", "rivals": ["base", "base"]},
        "learning_rate must be a finite number": {"kind": "reward_model", "config": {"learning_rate": float("nan")}},
        "steps must be a finite number": {"kind": "ppo", "config": {"steps": float("inf")}},
        "seed must be a whole number": {"kind": "generation", "config": {"seed": 1.5}},
        'epochs must be a number, not "x"': {"kind": "reward_model", "config": {"epochs": "x"}},
        "batch_size must be a whole number, not [1]": {"kind": "ppo", "config": {"batch_size": [1]}},
        "max_steps must be a whole number or null, not true": {"kind": "dpo", "config": {"max_steps": True}},
        "mode must be one of 'auto', 'full', 'lora', 'qlora', not \"half\"": {"kind": "dpo", "config": {"mode": "half"}},
        "backbone must be text, not 5": {"kind": "reward_model", "config": {"backbone": 5}},
        "kind must be one of": {"kind": "sft"},
        "send {": {"kind": "dpo", "config": [1]},
    }
    before = TrainingRun.objects.count()
    for message, body in refusals.items():
        response = api_start(client, manager, body)
        assert response.status_code == 400 and message in response.json()["error"], (body, response.content)
    assert TrainingRun.objects.count() == before


def test_the_reward_model_route_is_an_alias_of_the_runs_route(client, project, manager):
    token = token_create(user=manager)

    def train(body):
        return client.post("/api/projects/demo/reward-models/train", data=json.dumps(body),
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")

    response = train({"config": {"epochs": 2}, "reason": "nightly", "kind": "dpo"})  # it reads the config alone
    assert response.status_code == 202
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert (run.kind, run.config, run.reason) == (Kind.REWARD_MODEL, {"epochs": 2}, "started through the API")
    assert train({"config": {"epochs": "two"}}).status_code == 400


def test_what_older_api_clients_send_still_starts_the_same_run(client, project, manager, lineup):
    base, cand, _, _ = lineup
    dpo = api_start(client, manager, {"kind": "dpo", "checkpoint": "", "prompts": 64})  # "" and prompts: as before
    assert dpo.status_code == 202, dpo.content
    run = TrainingRun.objects.get(pk=dpo.json()["id"])
    assert (run.checkpoint_in, run.config) == (base, {})
    battle = api_start(client, manager, {"kind": "generation", "checkpoint": "cand", "prompts": 8})
    assert TrainingRun.objects.get(pk=battle.json()["id"]).config == {"checkpoints": [cand.pk, base.pk], "prompts": 8}


def test_start_run_and_its_alias_queue_through_the_same_path(project, lineup):
    out = StringIO()
    call_command("start_run", "--project", "demo", "--kind", "generation", "--checkpoint", "cand",
                 "--prompts", "4", "--set", "temperature=0.2", stdout=out)
    run = TrainingRun.objects.get(kind=Kind.GENERATION)
    assert f"Queued generation run {run.pk}" in out.getvalue()
    assert run.config == {"checkpoints": [lineup[1].pk, lineup[0].pk], "prompts": 4, "temperature": 0.2}
    assert run.reason == "manage.py start_run"
    call_command("train_reward_model", "--project", "demo", "--set", "epochs=3", stdout=out)
    run = TrainingRun.objects.get(kind=Kind.REWARD_MODEL)
    assert (run.config, run.reason) == ({"epochs": 3}, "manage.py train_reward_model")
    with pytest.raises(CommandError, match="nope"):
        call_command("start_run", "--project", "nope", "--kind", "dpo")
    with pytest.raises(CommandError, match="unknown reward-model settings: learning_rat"):
        call_command("start_run", "--project", "demo", "--kind", "reward_model", "--set", "learning_rat=1")
    with pytest.raises(CommandError, match="--prompts is for generation runs"):
        call_command("start_run", "--project", "demo", "--kind", "dpo", "--prompts", "5")
    with pytest.raises(CommandError, match="unrecognized arguments: --kind"):  # the alias trains reward models only
        call_command("train_reward_model", "--project", "demo", "--kind", "ppo")


def test_a_started_run_is_sent_to_the_gpu_queue_by_the_tasks_name(project, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    from config.celery import app

    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, kwargs=None, **options: sent.append(
        (name, list(args), options.get("queue"))))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = run_start(project=project, kind=Kind.REWARD_MODEL, reason="test")
    assert sent == []  # nothing leaves before the transaction commits
    for callback in callbacks:
        callback()
    assert sent == [("training.tasks.execute_run", [run.pk], "gpu")]


def test_with_always_eager_a_started_run_runs_at_once(project, monkeypatch, django_capture_on_commit_callbacks):
    from config.celery import app

    done = []
    monkeypatch.setitem(JOBS, Kind.REWARD_MODEL, lambda run, reporter: done.append(run.pk))
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_start(project=project, kind=Kind.REWARD_MODEL, reason="test")
    run.refresh_from_db()
    assert done == [run.pk] and run.state == TrainingRun.State.SUCCEEDED
