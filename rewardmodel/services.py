"""Publishing reward-model versions."""
from __future__ import annotations

from django.db import transaction
from django.db.models import Max

from annotate.models import Project, Snapshot
from rewardmodel.models import RewardModel


def reward_model_publish(
    *,
    project: Project,
    snapshot: Snapshot,
    backbone: str,
    artifact_uri: str,
    config: dict,
    metrics: dict,
    pairs: int,
    code_version: str = "",
) -> RewardModel:
    """Insert the next version's row; the artifact folder must already be complete and verified."""
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()  # serialise version numbers
        latest = RewardModel.objects.filter(project=project).aggregate(v=Max("version"))["v"] or 0
        return RewardModel.objects.create(
            project=project,
            version=latest + 1,
            backbone=backbone,
            snapshot=snapshot,
            votes=snapshot.votes,
            pairs=pairs,
            config=config,
            metrics=metrics,
            artifact_uri=artifact_uri,
            code_version=code_version,
        )


def latest_reward_model(project: Project) -> RewardModel | None:
    return (
        RewardModel.objects.filter(project=project, state=RewardModel.State.PUBLISHED)
        .select_related("snapshot")
        .order_by("-version")
        .first()
    )
