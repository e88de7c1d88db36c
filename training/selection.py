"""The active-selection refresh: score a project's unvoted pairs with its latest reward model, then let
``annotate.active`` choose which to serve and write their priorities.

Runs in a Celery task (``training.tasks.select_pairs``), never on the vote path: queued on the reward
model's queue after each reward-model run succeeds (``selection_after_run``), by ``manage.py
select_pairs``, and when a manager changes the policy; queued without a model on the default queue when
a project's pool must refill (``annotate.active.on_votes_recorded``).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from annotate.active import SelectionResult, free_pairs, pair_scores, selection_apply, selection_enqueue
from annotate.artifacts import model_source
from annotate.models import Completion, Project
from rewardmodel.services import latest_reward_model
from training.models import TrainingRun

# Completions scored per call of the model; the progress callback hears after each.
SCORE_BATCH = 256

Progress = Callable[[int, int], None]


def selection_scores(project: Project, *, progress: Progress | None = None,
                     batch_size: int = SCORE_BATCH) -> dict[int, float] | None:
    """The policy's score of every free pair (``annotate.active.free_pairs``) from the latest published
    reward model, by comparison id; None when the project has no reward model (or is fifo)."""
    from rewardmodel.lib.config import RewardConfig
    from rewardmodel.lib.model import load_reward_model
    from rewardmodel.lib.runtime import resolve_device
    from rewardmodel.lib.score import head_rewards

    rm = latest_reward_model(project)
    if rm is None or project.selection == "fifo":
        return None
    pairs = list(free_pairs(project).values_list("id", "completion_a_id", "completion_b_id"))
    wanted = sorted({pk for _, a, b in pairs for pk in (a, b)})
    # Scored where it trained: the GPU of a GPU worker, else the CPU.
    model = load_reward_model(model_source(rm.artifact_uri), device=resolve_device(RewardConfig(backbone="")))
    rewards: dict[int, np.ndarray] = {}
    for start in range(0, len(wanted), batch_size):
        chunk = list(Completion.objects.filter(pk__in=wanted[start:start + batch_size])
                     .values_list("id", "prompt__messages", "text"))
        heads = head_rewards(model, [messages for _, messages, _ in chunk], [text for _, _, text in chunk],
                             batch_size=32).numpy()
        rewards.update(zip((pk for pk, _, _ in chunk), heads, strict=True))
        if progress:
            progress(min(start + batch_size, len(wanted)), len(wanted))
    if not pairs:
        return {}
    side_a = np.stack([rewards[a] for _, a, _ in pairs])
    side_b = np.stack([rewards[b] for _, _, b in pairs])
    scores = pair_scores(project.selection, side_a, side_b)
    return {pk: float(score) for (pk, _, _), score in zip(pairs, scores, strict=True)}


def selection_refresh(*, project_id: int, rescore: bool = True, progress: Progress | None = None) -> SelectionResult:
    """Score (with ``rescore`` and a reward model) and re-choose the project's free pairs; the task's body."""
    project = Project.objects.get(pk=project_id)
    scores = selection_scores(project, progress=progress) if rescore else None
    return selection_apply(project=project, scores=scores)


def selection_after_run(run: TrainingRun) -> bool:
    """After a run succeeds: a new reward model of a project under an active policy queues a refresh with
    scores (on the reward model's own queue, ahead of the policy run the loop queues next)."""
    if run.kind != TrainingRun.Kind.REWARD_MODEL or not run.reward_model_out_id:
        return False
    if Project.objects.filter(pk=run.project_id).values_list("selection", flat=True).first() == "fifo":
        return False
    selection_enqueue(run.project_id, rescore=True)
    return True
