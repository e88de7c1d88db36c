"""Reward-model versions. Training runs that produce them live in ``training`` and point here."""
from __future__ import annotations

from django.db import models

from annotate.models import Project, Snapshot


class RewardModel(models.Model):
    class State(models.TextChoices):
        PUBLISHED = "published"
        RETIRED = "retired"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="reward_models")
    version = models.PositiveIntegerField()
    backbone = models.CharField(max_length=300)
    snapshot = models.ForeignKey(Snapshot, on_delete=models.PROTECT, related_name="reward_models")
    # Lineage: the votes the snapshot held, so accuracy can be charted against the amount of data.
    votes = models.PositiveIntegerField(default=0)
    pairs = models.PositiveIntegerField(default=0)
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)
    artifact_uri = models.CharField(max_length=500)
    code_version = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PUBLISHED)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "version"], name="reward_model_version_unique")]
        ordering = ["-project_id", "-version"]

    def __str__(self) -> str:
        return f"{self.project.slug} RM v{self.version}"

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("eval_accuracy")
