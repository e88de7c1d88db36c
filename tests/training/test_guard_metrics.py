"""The guard's measurements on a worker: reward models on the canary set, checkpoints on the fixed prompts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotate import services
from annotate.canary import canary_hold
from annotate.models import Comparison, Completion
from annotate.votes import vote_record
from rewardmodel.lib.model import load_reward_model
from rewardmodel.lib.score import score
from tests.conftest import make_comparisons
from tests.tiny import save_tiny_bert, save_tiny_llama
from tests.training.test_reward_runs import vote_by_rule
from training import guards
from training.generation import generation_job, generation_start
from training.guards import base_of, guard_prompts
from training.lib.distributed import run_job
from training.lib.guard import kl_from_base
from training.models import TrainingRun
from training.reward import reward_model_start, reward_model_train_job
from training.runs import run_execute


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.ARTIFACTS_DIR


def _train(project, tmp_path, **config):
    run = reward_model_start(project=project, config={"backbone": str(save_tiny_bert(tmp_path / "bert")),
                                                      "batch_size": 8, **config}, enqueue=False)
    run = run_execute(run.pk, reward_model_train_job)
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    return run.reward_model_out


@pytest.mark.parametrize("world_size", [1, 2], ids=["in-the-worker", "torchrun-rank-0-scores"])
def test_a_reward_model_is_scored_on_the_frozen_canaries_and_ties_are_left_out(project, annotator, artifacts,
                                                                                 tmp_path, world_size):
    vote_by_rule(project, annotator, 24)
    canaries = make_comparisons(project, 5, texts=("a good answer", "a bad answer"), start=100)
    assert canary_hold(project=project, count=5) == 5
    choices = ["a", "b", "a", "b", "tie"]  # what people said, whatever the rule
    for comparison, choice in zip(canaries, choices, strict=True):
        vote_record(annotator=annotator, comparison_id=comparison.pk, choice=choice)
    rm = _train(project, tmp_path, world_size=world_size)  # 2: the job scores the canaries it was sent
    assert rm.votes == 24  # the canary votes never reached the snapshot
    assert rm.metrics["canary_pairs"] == 4 and rm.metrics["canary_ties"] == 1
    # The recorded accuracy is what the published model gives on the frozen labels.
    model = load_reward_model(Path(rm.artifact_uri.removeprefix("file://")))
    decided = [c for c in Comparison.objects.filter(canary=True).order_by("id") if c.canary_answer != "tie"]
    prompts = [c.prompt.messages for c in decided]
    a = score(model, prompts, [c.completion_a.text for c in decided])
    b = score(model, prompts, [c.completion_b.text for c in decided])
    right = sum((x > y) == (c.canary_answer == "a") for c, x, y in zip(decided, a, b, strict=True))
    assert rm.metrics["canary_accuracy"] == pytest.approx(right / 4)
    assert [c.canary_answer for c in Comparison.objects.filter(canary=True).order_by("id")] == choices


def test_without_canaries_the_accuracy_is_none(project, annotator, artifacts, tmp_path):
    vote_by_rule(project, annotator, 16)
    rm = _train(project, tmp_path)
    assert rm.metrics["canary_accuracy"] is None and rm.metrics["canary_pairs"] == 0


def test_kl_from_base_is_zero_for_the_base_and_positive_for_a_changed_model(tmp_path):
    from training.lib.generation import GenerationConfig, generate_local

    base, changed = save_tiny_llama(tmp_path / "base", chat=True), save_tiny_llama(tmp_path / "new", chat=True, seed=3)
    prompts = [[{"role": "user", "content": f"q{i} hello world"}] for i in range(8)]
    samples = [o.text for o in generate_local(GenerationConfig(model=str(changed), temperature=1.0, max_new_tokens=12,
                                                               device="cpu"), prompts)]
    assert kl_from_base(str(changed), str(changed), prompts, samples) == 0.0
    assert kl_from_base(str(changed), str(base), prompts, samples) > 0.0


def test_a_battle_records_the_guard_metrics_of_its_candidate(project, annotator, artifacts, tmp_path, settings):
    settings.GUARD_PROMPTS = 4
    vote_by_rule(project, annotator, 16)
    rm = _train(project, tmp_path)
    old = save_tiny_llama(tmp_path / "old", chat=True)
    new = save_tiny_llama(tmp_path / "new", chat=True, seed=1)
    base = services.checkpoint_get_or_create(project=project, name="base", uri=str(old), state="incumbent")
    candidate = services.checkpoint_get_or_create(project=project, name="cand", uri=str(new), parent=base)
    run = generation_start(project=project, checkpoints=[candidate, base],
                           config={"prompts": 2, "max_new_tokens": 8, "temperature": 1.0}, enqueue=False)
    run = run_execute(run.pk, generation_job)
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    candidate.refresh_from_db()
    base.refresh_from_db()
    guard = candidate.meta["guard"]
    fixed = [p.pk for p in guard_prompts(project)]
    assert guard["prompts"] == fixed and len(fixed) == 4
    assert guard["samples"] >= 3  # an empty sample is not measured
    assert guard["reward_model"] == rm.pk and isinstance(guard["proxy_reward"], float)
    assert guard["base"] == base.pk and guard["kl_from_base"] > 0
    assert guard["rivals"] == {str(base.pk): base.meta["guard"]["proxy_reward"]}
    assert base.meta["guard"]["kl_from_base"] == 0.0 and base_of(base) == base
    assert run.outputs["guard"]["cand"]["proxy_reward"] == guard["proxy_reward"]
    # The fixed set is the same for every checkpoint, whatever the battle sampled.
    assert guard_prompts(project) == guard_prompts(project, count=4)
    # The fixed prompts the battle left out were sampled with it, measured, and not stored.
    battled = set(Completion.objects.filter(checkpoint=candidate).values_list("prompt_id", flat=True))
    assert len(battled) == 2 and set(Completion.objects.filter(checkpoint=base).values_list("prompt_id", flat=True)) == battled
    left_out = len(set(fixed) - battled)
    assert left_out and f"cand: 2 prompts to sample, 0 already sampled; and {left_out} of the guard's fixed" in run.log_tail


def test_on_ray_the_guard_s_prompts_go_to_the_cluster_with_the_battle_s(project, annotator, artifacts, tmp_path,
                                                                        settings, monkeypatch):
    """A worker that hands sampling to a Ray cluster (it may have no GPU) never samples a checkpoint itself:
    each checkpoint is one job on the battle's prompts and the guard's left-out ones."""
    from training import generation
    from training.lib.generation import GenerationConfig, generate_local

    settings.GUARD_PROMPTS = 4
    vote_by_rule(project, annotator, 16)
    _train(project, tmp_path)
    base = services.checkpoint_get_or_create(project=project, name="base", state="incumbent",
                                             uri=str(save_tiny_llama(tmp_path / "old", chat=True)))
    candidate = services.checkpoint_get_or_create(project=project, name="cand", parent=base,
                                                  uri=str(save_tiny_llama(tmp_path / "new", chat=True, seed=1)))
    jobs: list[tuple[str, int]] = []

    def on_the_cluster(run, reporter, *, checkpoint, prompts, sampling, progress):  # the job's own entry point
        jobs.append((checkpoint.name, len(prompts)))
        config = GenerationConfig(model=checkpoint.uri, **sampling, device="cpu")
        return generate_local(config, [p.messages for p in prompts], progress)

    def measured_on_the_cluster(run, reporter, plan, paths):  # what the job receives: JSON, through its entry point
        jobs.append(("guard", len(plan["groups"])))
        return run_job({"kind": "guard", "config": {**paths, "device": "cpu"},
                        "data": _written(tmp_path / "plan.json", plan)}, 1, tmp_path / "guard-job",
                       on_progress=lambda *_: None, on_log=lambda _: None)

    def here(*args, **kwargs):
        raise AssertionError("the worker read a model itself")

    monkeypatch.setattr(generation, "on_ray", lambda run: True)
    monkeypatch.setattr(generation, "generate_on_ray", on_the_cluster)
    monkeypatch.setattr(generation, "measure_on_ray", measured_on_the_cluster)
    monkeypatch.setattr(generation, "_generate", here)
    monkeypatch.setattr(guards, "_device", here)
    run = generation_start(project=project, checkpoints=[candidate, base],
                           config={"prompts": 2, "max_new_tokens": 8, "temperature": 1.0}, enqueue=False)
    run = run_execute(run.pk, generation_job)
    assert run.state == TrainingRun.State.SUCCEEDED, run.error
    battled = set(Completion.objects.filter(checkpoint=candidate).values_list("prompt_id", flat=True))
    wanted = len(battled | {p.pk for p in guard_prompts(project)})
    assert jobs == [("cand", wanted), ("base", wanted), ("guard", 2)]
    candidate.refresh_from_db()
    base.refresh_from_db()
    guard = candidate.meta["guard"]
    assert guard["samples"] >= 3 and guard["kl_from_base"] > 0 and isinstance(guard["proxy_reward"], float)
    assert base.meta["guard"]["kl_from_base"] == 0.0
    assert guard["rivals"] == {str(base.pk): base.meta["guard"]["proxy_reward"]}


def _written(path: Path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)
