"""Frozen dataset snapshots: the ``pairs`` export written once to a file, plus a row describing it.

A snapshot file is never rewritten: it is written under a temporary name, fsynced, then
published under ``ARTIFACTS_URL`` (renamed into place and made read-only, or uploaded and
verified: ``annotate.artifacts``), and only then is the row inserted with its sha256, row count
and the number of votes it was built from. Reward models and policy runs point at the row;
whoever reads the file gets it through ``snapshot_path``, checked against that sha256.
"""
from __future__ import annotations

from pathlib import Path

from django.db.models import Count, Q
from django.utils import timezone

from annotate import artifacts
from annotate.events import event_emit
from annotate.exports import filters_clean, write_export
from annotate.models import Comparison, Exclusion, Project, Snapshot, Vote
from annotate.reliability import AGGREGATIONS, fit_for_snapshot
from annotate.services import InvalidInput

FORMAT = "pairs"


def snapshot_freeze(*, project: Project, filters: dict | None = None, aggregation: str | None = None) -> Snapshot:
    """Freeze the project's current ``pairs`` export (optionally filtered, see
    ``exports.filters_clean``) to ``<ARTIFACTS_URL>/snapshots/<slug>/<timestamp>-<rows>.jsonl``.
    Without a ``sources`` filter it keeps the project's ``training_sources`` (people and simulated
    oracles by default, not AI judges); like every training export it leaves out gold comparisons, canary
    comparisons (``annotate.canary``) and excluded people (``annotate.gold``).

    The file's sha256 and row count are stored on the returned row; ``votes`` counts the
    votes read to build it. Reads take no lock: votes recorded meanwhile may or may not be
    included, and ``votes`` says exactly how many were.

    ``aggregation`` (default: the project's) is ``majority`` or ``model``; with ``model`` each pair's
    side comes from the reliability fit (a new fit first when the latest has not read the newest vote,
    ``annotate.reliability.fit_for_snapshot``), every row carries its ``confidence``, and the row
    records the fit.
    """
    aggregation = aggregation or project.aggregation
    if aggregation not in AGGREGATIONS:
        raise InvalidInput(f"aggregation must be one of {list(AGGREGATIONS)}, not {aggregation!r}")
    filters = dict(filters or {})
    # Training data: the project's chosen vote sources unless the caller names some (AI-judge votes opt in).
    filters.setdefault("sources", list(project.training_sources))
    filters = filters_clean(filters)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%fZ")  # microseconds: two freezes never share a name
    votes = 0

    def count_votes(n: int) -> None:
        nonlocal votes
        votes += n

    partial = artifacts.staging_path(artifacts.artifact_url("snapshots", project.slug, f"{stamp}.jsonl"))
    fit = fit_for_snapshot(project) if aggregation == "model" else None
    count = write_export(project=project, fmt=FORMAT, path=partial, progress=count_votes, filters=filters,
                         aggregation=aggregation, confidence=fit is not None, fit=fit)
    url = artifacts.artifact_url("snapshots", project.slug, f"{stamp}-{count}.jsonl")
    published = False
    try:
        sha256 = artifacts.sha256_file(partial)
        artifacts.file_publish(partial, url)
        published = True
        snapshot = Snapshot.objects.create(
            project=project, uri=url, format=FORMAT, count=count, votes=votes, sha256=sha256, filters=filters,
            aggregation=aggregation, reliability_fit=fit,
        )
        event_emit(project_id=project.pk, type="snapshot.frozen", data={
            "snapshot": snapshot.pk, "rows": count, "votes": votes, "sha256": sha256, "format": FORMAT,
            "filters": filters, "aggregation": aggregation})
        return snapshot
    except BaseException:
        # No row, no file: a snapshot exists only when both do.
        if published:
            artifacts.artifact_delete(url)
        else:
            partial.unlink(missing_ok=True)
        raise


def snapshot_left_out(project: Project) -> list[tuple[str, int]]:
    """What a snapshot frozen now would leave out, and why: (reason, votes) for each reason that applies,
    in the order the rules apply (one aggregate query)."""
    sources = list(project.training_sources)
    excluded = Exclusion.objects.standing(project).values("user_id")
    removed = Q(comparison__state=Comparison.State.REMOVED)
    is_gold = Q(comparison__state=Comparison.State.GOLD) & ~removed
    is_canary = Q(comparison__canary=True) & ~removed & ~is_gold
    by_person = Q(annotator_id__in=excluded) & ~removed & ~is_gold & ~is_canary
    by_source = ~Q(source__in=sources) & ~removed & ~is_gold & ~is_canary & ~Q(annotator_id__in=excluded)
    counts = Vote.objects.filter(comparison__project=project).aggregate(
        removed=Count("id", filter=removed), gold=Count("id", filter=is_gold), canary=Count("id", filter=is_canary),
        people=Count("id", filter=by_person), sources=Count("id", filter=by_source),
    )
    named = ", ".join(sources) or "none"
    reasons = [
        ("on pairs a manager removed after a flag", counts["removed"]),
        ("on gold pairs (checks, never trained on)", counts["gold"]),
        ("on canary pairs (held out to score reward models)", counts["canary"]),
        ("by people excluded from training (gold rule or a manager)", counts["people"]),
        (f"from sources the project does not train on (it trains on: {named})", counts["sources"]),
    ]
    return [(reason, n) for reason, n in reasons if n]


def snapshot_path(snapshot: Snapshot, *, pin: bool = False) -> Path:
    """The snapshot's file on this host: the file itself under a local ARTIFACTS_URL, else a copy pulled
    from the store into the cache and checked against the row's sha256. Raises InvalidInput for a file
    that is missing or corrupt. ``pin``: a run reads it again later (its ranks): keep the cached copy
    until the run ends."""
    try:
        return artifacts.file_fetch(snapshot.uri, sha256=snapshot.sha256, pin=pin)
    except artifacts.ArtifactError as error:
        raise InvalidInput(f"snapshot {snapshot.pk}: {error}") from error

