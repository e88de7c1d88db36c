"""Who to trust: the annotator reliability model fitted over a project's votes (``annotate.dawid_skene``).

A fit reads the votes that could reach training: comparisons a manager did not remove, votes from the
project's ``training_sources``, people not excluded (``annotate.gold``); gold comparisons are in it
with their answer clamped, so they anchor everyone's confusion matrix. It stores a ``ReliabilityFit``
(per person: competence, position bias, tie rate, votes, gold votes) and, per comparison, P(a is better)
and the confidence of the answer (``ComparisonPosterior``). Only the latest ``KEEP_POSTERIORS`` fits
keep their posteriors; older fits keep their summary row.

When it runs: after ``Project.reliability_every`` new votes (a Celery task, ``annotate.reliability_fit``,
queued on commit by the ``votes_recorded`` receiver below), on demand (``manage.py fit_reliability``),
and when a snapshot with model aggregation finds the latest fit older than the newest vote.

How snapshots and exports use it: ``aggregation="model"`` (``annotate.export_rows.model_verdict``).
"""
from __future__ import annotations

import random

from django.db import transaction
from django.db.models import Max

from annotate.models import Comparison, ComparisonPosterior, Exclusion, Project, ReliabilityFit, Vote
from annotate.services import InvalidInput

AGGREGATIONS = ("majority", "model")
METHOD = "dawid-skene"
FIT_TASK = "annotate.reliability_fit"
KEEP_POSTERIORS = 3
#: The receiver asks whether a fit is due on about one vote in this many (every vote of a bulk
#: import), so the vote path pays for the question rarely; a fit then starts at most a few
#: dozen votes after ``reliability_every`` is reached.
CHECK_ONE_IN = 20
POSTERIOR_BATCH = 2000


def fit_votes(project: Project):
    """The votes a fit reads (see the module docstring)."""
    excluded = Exclusion.objects.standing(project).values("user_id")
    return (Vote.objects.filter(comparison__project=project, source__in=list(project.training_sources))
            .exclude(comparison__state=Comparison.State.REMOVED).exclude(annotator_id__in=excluded))


def reliability_fit(*, project: Project, smoothing: float = 1.0) -> ReliabilityFit:
    """Fit the model over the project's votes now and store it. Raises InvalidInput when there is nothing to fit."""
    import numpy as np  # here, not at import: web processes load this module for the vote receiver

    from annotate import dawid_skene

    rows = list(fit_votes(project).values_list(
        "id", "comparison_id", "annotator_id", "choice", "winner_id", "comparison__completion_a_id",
        "comparison__completion_b_id", "comparison__state", "comparison__gold_answer"))
    if not rows:
        raise InvalidInput(f"project {project.slug} has no votes to fit the reliability model on "
                           f"(sources {', '.join(project.training_sources) or 'none'}, excluded people left out)")
    comparisons = sorted({row[1] for row in rows})
    people = sorted({row[2] for row in rows})
    item_of = {pk: i for i, pk in enumerate(comparisons)}
    worker_of = {pk: i for i, pk in enumerate(people)}
    clicks = {name: i for i, name in enumerate(dawid_skene.CLICKS)}
    items = np.array([item_of[row[1]] for row in rows])
    workers = np.array([worker_of[row[2]] for row in rows])
    choice = np.array([clicks[row[3]] for row in rows])
    # Shown swapped against the comparison's sides: the completion picked is now on the other side.
    swapped = np.array([(row[3] == "a" and row[4] == row[6]) or (row[3] == "b" and row[4] == row[5]) for row in rows])
    gold = {item_of[row[1]]: dawid_skene.SIDES.index(row[8]) for row in rows
            if row[7] == Comparison.State.GOLD and row[8] in dawid_skene.SIDES}
    result = dawid_skene.fit(items, workers, choice, swapped=swapped, gold=gold, n_items=len(comparisons),
                             n_workers=len(people), smoothing=smoothing)
    gold_votes = np.bincount(workers[np.isin(items, list(gold))], minlength=len(people))
    summary = {}
    for w, pk in enumerate(people):
        person = result.person(w)
        summary[str(pk)] = {"competence": round(person.competence, 4), "position_bias": round(person.position_bias, 4),
                            "tie_rate": round(person.tie_rate, 4), "votes": person.votes,
                            "gold_votes": int(gold_votes[w])}
    stats = {"iterations": result.iterations, "converged": result.converged, "smoothing": smoothing,
             "log_likelihood": round(result.log_likelihood, 4), "prior_a": round(float(result.prior[0]), 4)}
    confidence = result.confidence
    with transaction.atomic():
        fit = ReliabilityFit.objects.create(
            project=project, method=METHOD, votes=len(rows), comparisons=len(comparisons),
            gold_comparisons=len(gold), last_vote_id=max(row[0] for row in rows), people=summary, stats=stats)
        ComparisonPosterior.objects.bulk_create(
            (ComparisonPosterior(fit=fit, comparison_id=pk, p_a=float(result.p_a[i]), confidence=float(confidence[i]))
             for i, pk in enumerate(comparisons)), batch_size=POSTERIOR_BATCH)
        kept = ReliabilityFit.objects.filter(project=project).order_by("-fitted_at", "-id")[:KEEP_POSTERIORS]
        ComparisonPosterior.objects.filter(fit__project=project).exclude(fit__in=list(kept.values_list("id", flat=True))).delete()
    return fit


def latest_fit(project: Project) -> ReliabilityFit | None:
    return ReliabilityFit.objects.filter(project=project).order_by("-fitted_at", "-id").first()


def fit_posteriors(fit: ReliabilityFit) -> dict[int, float]:
    """comparison id -> P(a is better) under ``fit``."""
    return dict(ComparisonPosterior.objects.filter(fit=fit).values_list("comparison_id", "p_a").iterator(chunk_size=5000))


def fit_for_snapshot(project: Project) -> ReliabilityFit:
    """The latest fit if it has read the newest vote a fit would read, else a new one (snapshots: model labels)."""
    fit = latest_fit(project)
    newest = fit_votes(project).aggregate(newest=Max("id"))["newest"]
    if newest is None:  # nothing to fit: an empty fit, so that the (empty) snapshot still records one
        return fit or ReliabilityFit.objects.create(project=project, method=METHOD, stats={"empty": True})
    if fit is None or newest > fit.last_vote_id:
        fit = reliability_fit(project=project)
    return fit


def reliability_due(project_id: int) -> int | None:
    """New votes since the latest fit (counted up to the threshold) when a fit is due, else None."""
    project = Project.objects.filter(pk=project_id).values("reliability_every").first()
    every = project["reliability_every"] if project else 0
    if not every:
        return None
    last = (ReliabilityFit.objects.filter(project_id=project_id).order_by("-fitted_at", "-id")
            .values_list("last_vote_id", flat=True).first()) or 0
    new = len(Vote.objects.filter(comparison__project_id=project_id, id__gt=last).values_list("id", flat=True)[:every])
    return new if new >= every else None


def reliability_fit_enqueue(project_id: int, *, force: bool = False) -> None:
    """Queue a fit; with ``force`` it fits whether due or not (the console's button)."""
    from celery import signature

    from config.celery import app

    if app.conf.task_always_eager and FIT_TASK not in app.tasks:
        app.autodiscover_tasks(["annotate"], force=True)  # eager: the task runs here, so it must be known
    signature(FIT_TASK, args=[project_id], kwargs={"force": force}, app=app).apply_async(queue="default")


def on_votes_recorded(sender, *, project_id: int, count: int = 1, **_) -> None:
    """After votes commit: now and then (see CHECK_ONE_IN), ask whether a fit is due and queue one."""
    if count < CHECK_ONE_IN and random.random() * CHECK_ONE_IN >= count:
        return
    if reliability_due(project_id) is not None:
        reliability_fit_enqueue(project_id)


def fit_if_due(project_id: int, *, force: bool = False) -> ReliabilityFit | None:
    """The task's body: fit when still due (a queued task may find that another already fitted), or
    with ``force`` whenever there are votes to fit."""
    if force:
        project = Project.objects.get(pk=project_id)
        return reliability_fit(project=project) if fit_votes(project).exists() else None
    if reliability_due(project_id) is None:
        return None
    return reliability_fit(project=Project.objects.get(pk=project_id))
