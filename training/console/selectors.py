"""Reads for the console pages. Each returns what one page shows, in a fixed number of queries."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.db.models import Count, ExpressionWrapper, F, IntegerField, Prefetch, Q, QuerySet, Sum, Value
from django.db.models.functions import Mod
from django.utils import timezone

from annotate.models import Checkpoint, Comparison, Project, Snapshot
from annotate.stats import median_ms, project_votes
from rewardmodel.models import RewardModel
from rewardmodel.services import latest_reward_model
from training.loop import loop_status
from training.models import RunStep, TrainingRun

MAX_CHART_POINTS = 300
CHART_FIRST = ("loss", "accuracy", "reward", "kl", "reward_margin", "lr", "grad_norm", "pairs_per_s", "tokens_per_s")
NOT_CHARTED = {"step", "epoch", "elapsed_s", "pairs_seen", "tokens_seen"}
MAX_CHARTS = 6


@dataclass(frozen=True)
class Dashboard:
    votes_total: int
    votes_today: int
    annotators_today: int
    median_seconds: float | None
    votes_per_day: list[tuple[date, int]]
    queue: list[tuple[str, int, int]]  # (reason label, open comparisons, votes still wanted)
    reward_model: RewardModel | None
    incumbent: Checkpoint | None
    loop: str
    active_runs: list[TrainingRun]
    recent_runs: list[TrainingRun]

    @property
    def queue_open(self) -> int:
        return sum(n for _, n, _ in self.queue)

    @property
    def queue_wanted(self) -> int:
        return sum(w for _, _, w in self.queue)


def run_rows(project: Project) -> QuerySet:
    """Runs of a project with what a row of the runs table shows, loaded in the same query."""
    return TrainingRun.objects.filter(project=project).select_related(
        "checkpoint_in", "checkpoint_out", "reward_model_out"
    ).defer("log_tail", "error", "config", "outputs")


def dashboard(project: Project, *, days: int = 30, now: datetime | None = None) -> Dashboard:
    today = (now or timezone.now()).replace(hour=0, minute=0, second=0, microsecond=0)
    votes = project_votes(project)
    totals = votes.aggregate(
        total=Count("id"),
        today=Count("id", filter=Q(created_at__gte=today)),
        annotators=Count("annotator", distinct=True, filter=Q(created_at__gte=today)),
    )
    start = today - timedelta(days=days - 1)
    recent = votes.filter(created_at__gte=start)
    # One filtered count per day in a single scan: grouping by a date cast would call a Python
    # function per row on SQLite (seconds at 100k votes).
    bounds = [start + timedelta(days=d) for d in range(days + 1)]
    per_day = recent.aggregate(
        **{f"d{d}": Count("id", filter=Q(created_at__gte=bounds[d], created_at__lt=bounds[d + 1])) for d in range(days)}
    )
    wanted = ExpressionWrapper(Value(project.votes_per_comparison) - F("vote_count"), output_field=IntegerField())
    queue_rows = {
        reason: (n, w or 0)
        for reason, n, w in Comparison.objects.filter(project=project, state=Comparison.State.OPEN)
        .values_list("reason")
        .annotate(n=Count("id"), w=Sum(wanted))
        .order_by()
    }
    return Dashboard(
        votes_total=totals["total"],
        votes_today=totals["today"],
        annotators_today=totals["annotators"],
        median_seconds=_seconds(median_ms(recent).get(None)),
        votes_per_day=[(bounds[d].date(), per_day[f"d{d}"]) for d in range(days)],
        queue=[(label, *queue_rows.get(value, (0, 0))) for value, label in Comparison.Reason.choices],
        reward_model=latest_reward_model(project),
        incumbent=Checkpoint.objects.incumbent(project),
        loop=loop_status(project),
        active_runs=list(run_rows(project).active().order_by("created_at")[:10]),
        recent_runs=list(run_rows(project).order_by("-created_at")[:8]),
    )


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


def run_counts(project: Project) -> dict[str, dict[str, int]]:
    """Runs per kind and per state, for the filter links: one GROUP BY."""
    counts: dict[str, dict[str, int]] = {"kind": {}, "state": {}}
    for kind, state, n in (
        TrainingRun.objects.filter(project=project).values_list("kind", "state").annotate(n=Count("id")).order_by()
    ):
        counts["kind"][kind] = counts["kind"].get(kind, 0) + n
        counts["state"][state] = counts["state"].get(state, 0) + n
    return counts


@dataclass(frozen=True)
class RunView:
    run: TrainingRun
    metrics: dict[str, list[tuple[float, float]]]
    generation_checkpoints: list[Checkpoint] = field(default_factory=list)

    @property
    def charted(self) -> list[str]:
        keys = [k for k in CHART_FIRST if k in self.metrics]
        keys += sorted(k for k in self.metrics if k not in keys and k not in NOT_CHARTED)
        return keys[:MAX_CHARTS]

    @property
    def queue_wait_s(self) -> float | None:
        run = self.run
        return (run.started_at - run.created_at).total_seconds() if run.started_at else None

    @property
    def seconds_per_step(self) -> float | None:
        run = self.run
        return run.duration_s / run.step if run.duration_s and run.step else None

    @property
    def eta_s(self) -> float | None:
        run = self.run
        if run.finished or not run.duration_s or not 0 < run.progress < 1:
            return None
        return run.duration_s / run.progress * (1 - run.progress)


def run_for_page(project: Project, run_id: int) -> TrainingRun:
    """The run with its inputs and outputs (raises DoesNotExist for another project's run)."""
    return TrainingRun.objects.select_related(
        "snapshot", "reward_model_in", "checkpoint_in", "reward_model_out", "checkpoint_out"
    ).get(project=project, pk=run_id)


def run_view(run: TrainingRun, *, max_points: int = MAX_CHART_POINTS) -> RunView:
    """The run's metric series, thinned in the database to at most about ``max_points`` steps."""
    steps = RunStep.objects.filter(run=run)
    count = run.total_steps or steps.count()
    if count > max_points:
        stride = math.ceil(count / max_points)
        steps = steps.annotate(phase=Mod("step", stride)).filter(Q(phase=0) | Q(step=run.step))
    series: dict[str, list[tuple[float, float]]] = {}
    for step, metrics in steps.order_by("step").values_list("step", "metrics"):
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append((step, value))
    checkpoints: list[Checkpoint] = []
    if run.kind == TrainingRun.Kind.GENERATION and isinstance(run.config.get("checkpoints"), list):
        ids = run.config["checkpoints"]
        by_id = {c.pk: c for c in Checkpoint.objects.filter(project_id=run.project_id, pk__in=ids)}
        checkpoints = [by_id[i] for i in ids if i in by_id]
    return RunView(run, series, checkpoints)


def reward_models(project: Project) -> list[RewardModel]:
    return list(
        RewardModel.objects.filter(project=project).select_related("snapshot", "produced_by").order_by("-version")
    )


def snapshots(project: Project) -> QuerySet:
    """Snapshots newest first, with the reward models trained on them and how many runs used them."""
    return (
        Snapshot.objects.filter(project=project)
        .annotate(run_count=Count("runs", distinct=True))
        .prefetch_related(Prefetch("reward_models", queryset=RewardModel.objects.only("id", "version", "snapshot_id")))
        .order_by("-created_at", "-id")
    )
