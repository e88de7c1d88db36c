"""Annotator statistics and inter-annotator agreement, computed with aggregate queries.

Per annotator: votes, median time per vote, agreement with the majority on shared
comparisons, position bias (how often A wins among their A/B votes) and tie rate. Per
project: Krippendorff's alpha for nominal data and the raw pairwise agreement rate (the
ceiling a reward model's accuracy is measured against).

Cost does not grow with rows in Python except for one pass over the votes of *shared*
comparisons (two or more votes), three small columns each, in comparison order; counts and
medians are computed by the database (medians with a window function). These reads are plain
queries, not server-side cursors: PostgreSQL plans a cursor for its first rows, and on tables
whose statistics are stale that plan was a nested loop taking minutes at 100k votes.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from operator import itemgetter

from django.db.models import Count, F, Max, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from annotate.models import Project, Vote

CHOICES = ("a", "b", "tie", "both_bad")


@dataclass(frozen=True)
class AnnotatorStats:
    user_id: int
    username: str
    votes: int
    today: int
    median_seconds: float | None
    agreement: float | None  # share of their shared votes that match the others' unique majority
    compared: int  # shared votes where the others had a unique majority (the agreement's denominator)
    a_share: float | None  # A among their A/B votes: 0.5 is no position bias
    decisive: int  # their A/B votes
    tie_rate: float
    both_bad_rate: float
    last_vote_at: datetime | None

    @property
    def position_bias_flag(self) -> bool:
        """True when the A share is more than two standard errors from 0.5 (and there are 20+ A/B votes)."""
        if self.a_share is None or self.decisive < 20:
            return False
        return abs(self.a_share - 0.5) > 2 * math.sqrt(0.25 / self.decisive)


@dataclass(frozen=True)
class Agreement:
    """Agreement across annotators on comparisons with two or more votes."""

    alpha: float | None  # Krippendorff's alpha, nominal, over a / b / tie / both bad
    observed: float | None  # share of pairs of votes on the same comparison that agree
    decisive: float | None  # the same over pairs where both votes picked A or B: the reward model's ceiling
    units: int  # comparisons with two or more votes
    votes: int  # votes on those comparisons


def start_of_day() -> datetime:
    return timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)


def project_votes(project: Project, *, sources: Iterable[str] | None = None) -> QuerySet:
    votes = Vote.objects.filter(comparison__project=project)
    return votes if sources is None else votes.filter(source__in=list(sources))


def median_ms(votes: QuerySet, *, by: str | None = None) -> dict:
    """Median ``time_spent_ms`` of ``votes``, per value of the field ``by`` (or under the key None).

    Per group, one query: rows are numbered within each group by time, and only the one or two
    middle rows come back (2·row ≥ n and 2·row ≤ n + 2 picks the middle of odd and even groups
    alike). Without ``by``, two cheaper queries: a count, then the middle rows by OFFSET.
    """
    timed = votes.filter(time_spent_ms__isnull=False)
    if by is None:
        n = timed.count()
        if n == 0:
            return {}
        middle = list(timed.order_by("time_spent_ms").values_list("time_spent_ms", flat=True)[(n - 1) // 2 : n // 2 + 1])
        return {None: sum(middle) / len(middle)}
    partition = [F(by)]
    rows = (
        timed.annotate(
            row=Window(RowNumber(), partition_by=partition, order_by=[F("time_spent_ms").asc(), F("id").asc()]),
            n=Window(Count("id"), partition_by=partition),
        )
        .annotate(twice=F("row") * 2)
        .filter(twice__gte=F("n"), twice__lte=F("n") + 2)
        .values_list(by, "time_spent_ms")
    )
    groups: dict = {}
    for key, value in rows:
        groups.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in groups.items()}


Profile = tuple[tuple[str, int], ...]  # a unit's (category, count) pairs, sorted: units alike share one


def _profile(unit: Mapping[str, int]) -> Profile:
    return tuple(sorted((c, n) for c, n in unit.items() if n))


def krippendorff_alpha_nominal(units: Iterable[Mapping[str, int]]) -> float | None:
    """Krippendorff's alpha for nominal data from each unit's counts per category.

    Units with fewer than two values are not pairable and are skipped. Returns None when no
    unit is pairable, and 1.0 when every pairable value falls in one category (no variation,
    nothing to disagree on; alpha is formally undefined there). Units with the same counts are
    handled once, so 100,000 comparisons with a handful of votes each cost a few dozen steps.
    """
    return _alpha(Counter(_profile(unit) for unit in units))


def _alpha(profiles: Counter) -> float | None:
    coincidence: Counter = Counter()  # o[c, k]
    for profile, weight in profiles.items():
        m = sum(n for _, n in profile)
        if m < 2:
            continue
        for c, n_c in profile:
            for k, n_k in profile:
                pairs = n_c * (n_c - 1) if c == k else n_c * n_k
                if pairs:
                    coincidence[c, k] += weight * pairs / (m - 1)
    n = sum(coincidence.values())
    if n == 0:
        return None
    marginals: Counter = Counter()
    for (c, _), value in coincidence.items():
        marginals[c] += value
    disagreement = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(marginals[c] * marginals[k] for c in marginals for k in marginals if c != k)
    if expected == 0:
        return 1.0
    return 1.0 - (n - 1) * disagreement / expected


def _pair_agreement(profiles: Counter, keep: tuple[str, ...]) -> float | None:
    agree = total = 0
    for profile, weight in profiles.items():
        counts = [n for c, n in profile if c in keep]
        m = sum(counts)
        total += weight * (m * (m - 1) // 2)
        agree += weight * sum(n * (n - 1) // 2 for n in counts)
    return agree / total if total else None


def _agreement_from(profiles: Counter) -> Agreement:
    pairable = Counter({p: w for p, w in profiles.items() if sum(n for _, n in p) >= 2})
    return Agreement(
        alpha=_alpha(pairable),
        observed=_pair_agreement(pairable, CHOICES),
        decisive=_pair_agreement(pairable, ("a", "b")),
        units=sum(pairable.values()),
        votes=sum(w * sum(n for _, n in p) for p, w in pairable.items()),
    )


def project_agreement(*, project: Project, sources: Iterable[str] | None = None) -> Agreement:
    """Alpha and agreement rates from one GROUP BY (comparison, choice) over shared comparisons."""
    units: dict[int, dict[str, int]] = {}
    rows = (
        project_votes(project, sources=sources)
        .filter(comparison__vote_count__gte=2)
        .values_list("comparison_id", "choice")
        .annotate(n=Count("id"))
        .order_by()
    )
    for comparison_id, choice, n in rows:
        units.setdefault(comparison_id, {})[choice] = n
    return _agreement_from(Counter(_profile(unit) for unit in units.values()))


def _verdicts(profile: Profile) -> dict[str, bool | None]:
    """For each choice in a unit: does it match the others' single majority (None: others split or absent)?"""
    counts = dict(profile)
    verdicts: dict[str, bool | None] = {}
    for choice in counts:
        others = {c: n - (c == choice) for c, n in counts.items()}
        top = max(others.values())
        winners = [c for c, n in others.items() if n == top]
        verdicts[choice] = None if top == 0 or len(winners) > 1 else winners[0] == choice
    return verdicts


def annotator_report(
    *, project: Project, sources: Iterable[str] | None = None, today: datetime | None = None
) -> tuple[list[AnnotatorStats], Agreement]:
    """Every annotator's statistics, most votes first, and the project's agreement. Four queries."""
    votes = project_votes(project, sources=sources)
    since = today or start_of_day()
    counts = (
        votes.values("annotator_id", "annotator__username")
        .annotate(
            votes=Count("id"),
            today=Count("id", filter=Q(created_at__gte=since)),
            last=Max("created_at"),
            **{choice: Count("id", filter=Q(choice=choice)) for choice in CHOICES},
        )
        .order_by()
    )
    medians = median_ms(votes, by="annotator_id")
    agreed: Counter = Counter()
    compared: Counter = Counter()
    profiles: Counter = Counter()
    verdicts: dict[Profile, dict[str, bool | None]] = {}
    rows = (
        votes.filter(comparison__vote_count__gte=2)
        .order_by("comparison_id")
        .values_list("comparison_id", "annotator_id", "choice")
    )
    for _, group in groupby(rows, key=itemgetter(0)):
        voters = [(annotator_id, choice) for _, annotator_id, choice in group]
        profile = _profile(Counter(choice for _, choice in voters))
        profiles[profile] += 1
        if profile not in verdicts:
            verdicts[profile] = _verdicts(profile)
        verdict = verdicts[profile]
        for annotator_id, choice in voters:
            matched = verdict[choice]
            if matched is not None:
                compared[annotator_id] += 1
                agreed[annotator_id] += matched
    stats = []
    for row in counts:
        user_id, total = row["annotator_id"], row["votes"]
        decisive = row["a"] + row["b"]
        median = medians.get(user_id)
        stats.append(
            AnnotatorStats(
                user_id=user_id,
                username=row["annotator__username"],
                votes=total,
                today=row["today"],
                median_seconds=None if median is None else median / 1000.0,
                agreement=agreed[user_id] / compared[user_id] if compared[user_id] else None,
                compared=compared[user_id],
                a_share=row["a"] / decisive if decisive else None,
                decisive=decisive,
                tie_rate=row["tie"] / total,
                both_bad_rate=row["both_bad"] / total,
                last_vote_at=row["last"],
            )
        )
    stats.sort(key=lambda s: (-s.votes, s.username))
    return stats, _agreement_from(profiles)


@dataclass(frozen=True)
class JudgeAgreement:
    """On comparisons that an AI judge and at least two people voted on: how often the judge picks the
    people's majority, next to how often a person picks the other people's majority (leave-one-out)."""

    comparisons: int
    judge: float | None
    judge_compared: int
    people: float | None
    people_compared: int


def judge_agreement(*, project: Project) -> JudgeAgreement:
    """``JudgeAgreement`` of the project (one query). Comparisons where the people are split count for
    neither side."""
    rows = (Vote.objects.filter(comparison__project=project, source__in=[Vote.Source.HUMAN, Vote.Source.AI])
            .order_by("comparison_id").values_list("comparison_id", "source", "choice"))
    judge = [0, 0]
    people = [0, 0]
    shared = 0
    for _, group in groupby(rows, key=itemgetter(0)):
        group = list(group)
        humans = [choice for _, source, choice in group if source == Vote.Source.HUMAN]
        judges = [choice for _, source, choice in group if source == Vote.Source.AI]
        if not judges or len(humans) < 2:
            continue
        shared += 1
        majority = _unique_majority(Counter(humans))
        if majority is not None:
            judge[0] += sum(choice == majority for choice in judges)
            judge[1] += len(judges)
        verdict = _verdicts(_profile(Counter(humans)))  # leave-one-out, as for the annotators' agreement
        for choice in humans:
            if verdict[choice] is not None:
                people[0] += verdict[choice]
                people[1] += 1
    return JudgeAgreement(comparisons=shared, judge=judge[0] / judge[1] if judge[1] else None,
                          judge_compared=judge[1], people=people[0] / people[1] if people[1] else None,
                          people_compared=people[1])


def _unique_majority(counts: Counter) -> str | None:
    ranked = counts.most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]
