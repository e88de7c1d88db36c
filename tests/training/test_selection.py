"""The active-selection refresh on a real (tiny) reward model: scores, priorities, the queue, the triggers."""
from __future__ import annotations

import pytest
from django.core.management import call_command

from annotate import services
from annotate.active import candidate_pairs_create, pair_scores
from annotate.artifacts import model_source
from annotate.models import Comparison
from annotate.queue import comparison_next
from rewardmodel.services import latest_reward_model
from tests.conftest import PASSWORD
from tests.tiny import save_tiny_bert
from tests.training.test_reward_runs import vote_by_rule
from training.models import TrainingRun
from training.reward import ACTIVE_ENSEMBLE_SIZE, reward_model_start

WORDS = ["good", "bad", "very good", "not bad", "a cat", "the dog is good"]


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.ARTIFACTS_DIR



def _candidates(project, n_prompts: int = 3) -> None:
    checkpoint = services.checkpoint_get_or_create(project=project, name="sampler")
    for i in range(n_prompts):
        prompt, _ = services.prompt_get_or_create(project=project, messages=f"hello q{i} ?")
        for j, words in enumerate(WORDS[:4]):
            services.completion_get_or_create(prompt=prompt, checkpoint=checkpoint, text=f"{words} w{i + j}")
    candidate_pairs_create(project=project, seed=0)


def _predicted(project) -> dict[int, float]:
    """The policy's scores computed here, straight from the published model's heads."""
    from rewardmodel.lib.model import load_reward_model
    from rewardmodel.lib.score import head_rewards

    model = load_reward_model(model_source(latest_reward_model(project).artifact_uri))
    pairs = list(Comparison.objects.filter(project=project, reason="active")
                 .select_related("prompt", "completion_a", "completion_b"))
    side = lambda which: head_rewards(model, [p.prompt.messages for p in pairs],  # noqa: E731
                                      [getattr(p, which).text for p in pairs]).numpy()
    scores = pair_scores(project.selection, side("completion_a"), side("completion_b"))
    return {p.pk: float(s) for p, s in zip(pairs, scores, strict=True)}


def test_a_reward_model_run_queues_the_refresh_and_the_queue_serves_the_most_informative_pair_first(
    project, annotator, artifacts, tmp_path, eager
):
    from training.tasks import execute_run

    project.selection, project.serve_per_prompt = "bald", 2
    project.save()
    vote_by_rule(project, annotator, 24)
    _candidates(project)
    assert Comparison.objects.filter(project=project, state="pool").count() == 3 * 4
    assert not Comparison.objects.exclude(selection_score=None).exists()

    backbone = str(save_tiny_bert(tmp_path / "tiny-bert"))
    run = reward_model_start(project=project, config={"backbone": backbone, "batch_size": 8, "ensemble_size": 4,
                                                      "epochs": 2.0}, enqueue=False)
    execute_run(run.pk)  # the worker's task: train, publish, then (eager here) the refresh
    run.refresh_from_db()
    assert run.state == TrainingRun.State.SUCCEEDED

    predicted = _predicted(project)
    pairs = {c.pk: c for c in Comparison.objects.filter(project=project, reason="active")}
    assert {pk: c.selection_score for pk, c in pairs.items()} == pytest.approx(predicted, abs=1e-5)
    assert len(set(predicted.values())) > 1  # the heads disagree, and not everywhere alike
    by_priority = sorted(pairs, key=lambda pk: -pairs[pk].priority)
    assert [predicted[pk] for pk in by_priority] == sorted(predicted.values(), reverse=True)
    for prompt_id in {c.prompt_id for c in pairs.values()}:  # each prompt serves its two best
        mine = sorted((c for c in pairs.values() if c.prompt_id == prompt_id), key=lambda c: -predicted[c.pk])
        assert [c.state for c in mine] == ["open", "open", "pool", "pool", "pool", "pool"]

    fresh = services.user_with_role(project=project, username="fresh", password=PASSWORD, role="annotator")
    served = comparison_next(project=project, annotator=fresh)
    assert served.pk == max(predicted, key=predicted.get)


def test_a_reward_model_run_of_a_fifo_project_queues_nothing(project, annotator, artifacts, tmp_path, monkeypatch):
    from training import selection

    queued = []
    monkeypatch.setattr(selection, "selection_enqueue", lambda pk, *, rescore: queued.append(pk))
    vote_by_rule(project, annotator, 8)
    run = reward_model_start(project=project, config={"backbone": str(save_tiny_bert(tmp_path / "b"))},
                             enqueue=False)
    from training.tasks import execute_run

    execute_run(run.pk)
    assert queued == []
    project.selection = "uncertainty"
    project.save()
    run.refresh_from_db()
    assert selection.selection_after_run(run) and queued == [project.pk]


def test_select_pairs_scores_on_demand(project, annotator, artifacts, tmp_path, capsys):
    vote_by_rule(project, annotator, 16)
    run = reward_model_start(project=project, config={"backbone": str(save_tiny_bert(tmp_path / "b")),
                                                      "ensemble_size": 3}, enqueue=False)
    from training.reward import reward_model_train_job
    from training.runs import run_execute

    run_execute(run.pk, reward_model_train_job)
    project.selection = "uncertainty"
    project.save()
    _candidates(project, n_prompts=2)
    call_command("select_pairs", "--project", project.slug)
    assert "12 unvoted pairs, 12 scored" in capsys.readouterr().out
    predicted = _predicted(project)
    stored = dict(Comparison.objects.filter(project=project, reason="active").values_list("pk", "selection_score"))
    assert stored == pytest.approx(predicted, abs=1e-5)


def test_a_bald_project_trains_reward_models_whose_heads_can_disagree(project):
    project.selection = "bald"
    project.save()
    assert reward_model_start(project=project, enqueue=False).config["ensemble_size"] == ACTIVE_ENSEMBLE_SIZE
    assert reward_model_start(project=project, config={"ensemble_size": 2}, enqueue=False).config["ensemble_size"] == 2
    project.selection = "fifo"
    project.save()
    assert "ensemble_size" not in reward_model_start(project=project, enqueue=False).config
