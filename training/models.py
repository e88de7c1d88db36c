"""Training runs of every kind (reward model, DPO, PPO, generation) and their per-step metrics."""
from __future__ import annotations

from django.db import models

from annotate.models import Checkpoint, Project, Snapshot
from rewardmodel.models import RewardModel


class TrainingRunQuerySet(models.QuerySet):
    def active(self) -> TrainingRunQuerySet:
        return self.filter(state__in=[TrainingRun.State.QUEUED, TrainingRun.State.RUNNING])


class TrainingRun(models.Model):
    class Kind(models.TextChoices):
        REWARD_MODEL = "reward_model", "reward model"
        DPO = "dpo", "DPO"
        PPO = "ppo", "PPO"
        GENERATION = "generation"

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    config = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    reason = models.CharField(max_length=200, blank=True, help_text="Why the run was started.")
    progress = models.FloatField(default=0.0)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    # The process on ``worker`` that runs it (not for a run whose job is on a Ray cluster): a worker
    # starting on that host fails the run at once when this process is gone (crashed, killed, rebooted).
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    # Which start this is: a run whose worker was lost runs again as attempt 2, 3, ... (RUN_MAX_ATTEMPTS);
    # only the process running the current attempt may publish or finish it.
    attempt = models.PositiveIntegerField(default=1)
    task_id = models.CharField(max_length=64, blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The job that runs this on a Ray cluster (RUN_BACKEND=ray), so that a worker can follow it again
    # after the one that submitted it died: "flywheel-run-<id>-<part>-<token>", empty when it ran here.
    ray_job_id = models.CharField(max_length=128, blank=True, default="")
    # Inputs.
    snapshot = models.ForeignKey(Snapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="runs")
    reward_model_in = models.ForeignKey(
        RewardModel, null=True, blank=True, on_delete=models.PROTECT, related_name="consumer_runs"
    )
    checkpoint_in = models.ForeignKey(
        Checkpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="consumer_runs"
    )
    # Outputs: a run points at what it produced, never the other way round.
    reward_model_out = models.OneToOneField(
        RewardModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_by"
    )
    checkpoint_out = models.OneToOneField(
        Checkpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_by"
    )
    outputs = models.JSONField(default=dict, blank=True)

    objects = TrainingRunQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["project", "kind", "state"], name="run_by_project_kind_state")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} run {self.pk} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state in self.FINISHED

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or self.heartbeat_at or self.started_at
        return (end - self.started_at).total_seconds()


class RunStep(models.Model):
    """Metrics logged at one step of a run: the data behind the run's charts."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="steps")
    step = models.PositiveIntegerField()
    metrics = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="one_row_per_run_step")]
        ordering = ["step"]


class LoopSettings(models.Model):
    """How a project's flywheel turns by itself (training's side of a project's settings)."""

    class Method(models.TextChoices):
        DPO = "dpo", "DPO from the snapshot"
        PPO = "ppo", "PPO against the reward model"

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="loop")
    enabled = models.BooleanField(
        default=False, help_text="Retrain → policy update → generation run by themselves as votes arrive."
    )
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.DPO)
    battle_prompts = models.PositiveIntegerField(default=48, help_text="Prompts sampled per checkpoint battle.")
    policy_config = models.JSONField(default=dict, blank=True, help_text="DPO or PPO settings for policy runs.")
    sampling = models.JSONField(default=dict, blank=True, help_text="Sampling settings for generation runs.")
    # Compounding rounds (training.loop): promote by the button's rule once a candidate has enough battle votes,
    # and train the next policy from the incumbent on the votes since its parent's snapshot.
    auto_promote = models.BooleanField(
        default=False,
        help_text="Promote a candidate by itself when its interval clears the incumbent's (the button's rule) "
                  "after enough battle votes, unless the reward-hacking guard flags it.",
    )
    promote_min_votes = models.PositiveIntegerField(
        default=32, help_text="Battle votes on a candidate before automatic promotion considers it."
    )
    train_on = models.CharField(
        max_length=8, choices=[("new", "votes since the parent's snapshot"), ("all", "the whole snapshot")],
        default="new", help_text="What a policy run that starts from a trained checkpoint learns from.",
    )

    def __str__(self) -> str:
        return f"loop of {self.project.slug}"


from django.conf import settings  # noqa: E402  (appended with Promotion, the only model that needs it)


class Promotion(models.Model):
    """A checkpoint made incumbent: who did it, against which incumbent, and the intervals at the time.

    ``override_reason`` is set when the candidate's interval did not clear the incumbent's and a
    manager promoted it anyway; the rule and the reason are both on the record.
    """

    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="promotions")
    previous = models.ForeignKey(
        Checkpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="demotions"
    )
    # None: the loop promoted it by itself (LoopSettings.auto_promote), by the same rule.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                             related_name="promotions")
    override_reason = models.TextField(blank=True)
    score = models.FloatField(null=True, blank=True)
    lower = models.FloatField(null=True, blank=True)
    upper = models.FloatField(null=True, blank=True)
    previous_score = models.FloatField(null=True, blank=True)
    previous_lower = models.FloatField(null=True, blank=True)
    previous_upper = models.FloatField(null=True, blank=True)
    battle_votes = models.PositiveIntegerField(default=0, help_text="Human battle votes behind the fit.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.checkpoint} promoted by {self.user}"
