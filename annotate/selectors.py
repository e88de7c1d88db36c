"""Reads for the annotate pages and API."""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q
from django.utils import timezone

from annotate.models import Comparison, Project, Vote
from annotate.queue import comparisons_left


@dataclass(frozen=True)
class Progress:
    votes_today: int
    votes_total: int
    left: int


def progress_for(*, project: Project, annotator) -> Progress:
    start_of_day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    counts = Vote.objects.filter(annotator=annotator, comparison__project=project).aggregate(
        total=Count("id"), today=Count("id", filter=Q(created_at__gte=start_of_day))
    )
    return Progress(
        votes_today=counts["today"],
        votes_total=counts["total"],
        left=comparisons_left(project=project, annotator=annotator),
    )


def project_counts(project_ids: list[int]) -> dict[int, dict[str, int]]:
    """Prompt, comparison, open-comparison and vote counts per project, in three queries."""
    counts: dict[int, dict[str, int]] = {pid: {"prompts": 0, "comparisons": 0, "open": 0, "votes": 0} for pid in project_ids}
    for row in (
        Comparison.objects.filter(project_id__in=project_ids)
        .values("project_id")
        .annotate(n=Count("id"), open=Count("id", filter=Q(state=Comparison.State.OPEN)))
    ):
        counts[row["project_id"]].update(comparisons=row["n"], open=row["open"])
    from annotate.models import Prompt

    for row in Prompt.objects.filter(project_id__in=project_ids).values("project_id").annotate(n=Count("id")):
        counts[row["project_id"]]["prompts"] = row["n"]
    for row in (
        Vote.objects.filter(comparison__project_id__in=project_ids)
        .values("comparison__project_id")
        .annotate(n=Count("id"))
    ):
        counts[row["comparison__project_id"]]["votes"] = row["n"]
    return counts
