"""The human side of the loop: projects, prompts, completions, comparisons, votes, snapshots.

Writes live in ``annotate.services``; reads in ``annotate.selectors`` and the QuerySet
methods below. Models hold no behaviour beyond small derived properties.
"""
from __future__ import annotations

import hashlib
import json
from urllib.parse import urlparse

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


def messages_hash(messages: list[dict]) -> str:
    """sha256 of a conversation in canonical JSON: the de-duplication key of a prompt."""
    canonical = json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def default_training_sources() -> list[str]:
    return ["human", "imported", "simulated"]


class Project(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    guidelines = models.TextField(blank=True, help_text="Markdown shown to annotators.")
    votes_per_comparison = models.PositiveSmallIntegerField(
        default=1, help_text="How many people should vote on each comparison (the overlap)."
    )
    retrain_threshold = models.PositiveIntegerField(
        default=200, help_text="New votes since the last reward model that trigger a retrain (0: never)."
    )
    lease_seconds = models.PositiveIntegerField(
        default=600, help_text="How long a comparison stays reserved for the annotator who was shown it."
    )
    # Gold comparisons (annotate.gold): the share of each annotator's pairs drawn from gold, and the rule
    # that leaves a person's votes out of training: gold accuracy below gold_threshold after gold_min_votes.
    gold_rate = models.FloatField(default=0.05, help_text="Share of each annotator's pairs that are gold (0 to 0.5).")
    gold_threshold = models.FloatField(
        default=0.7, help_text="Gold accuracy below which a person's votes leave the training data."
    )
    gold_min_votes = models.PositiveSmallIntegerField(
        default=10, help_text="Gold votes a person gives before the threshold applies."
    )
    # How many gold comparisons the project has (kept by annotate.gold): the queue, which has the project
    # row in hand, draws gold only when there is some, at no cost to projects without it.
    gold_count = models.PositiveIntegerField(default=0, editable=False)
    # Which vote sources train: people (human, imported) and simulated oracles by default; AI-judge votes opt in.
    training_sources = models.JSONField(
        default=default_training_sources, blank=True,
        help_text="Vote sources that reach training snapshots (human, imported, simulated, ai).",
    )
    # How a comparison's votes become one label in snapshots (annotate.reliability): the majority, or the
    # reliability model's posterior (Dawid–Skene over the votes, gold as known answers).
    aggregation = models.CharField(
        max_length=16, choices=[("majority", "majority"), ("model", "reliability model")], default="majority",
        help_text="How snapshots aggregate votes: the majority, or the reliability model's posterior.",
    )
    reliability_every = models.PositiveIntegerField(
        default=200, help_text="New votes since the last reliability fit that trigger a new fit (0: only on demand)."
    )
    # Active selection (annotate.active): which open pairs the queue serves first, refreshed by a Celery task
    # after each reward-model publish (it writes Comparison.priority and selection_score, never the vote path).
    selection = models.CharField(
        max_length=16,
        choices=[("fifo", "first in, first out"), ("uncertainty", "reward-model uncertainty"),
                 ("bald", "information gain (BALD)")],
        default="fifo",
        help_text="Which pairs annotators see first: oldest first, the pairs the reward model is least sure "
                  "about, or the pairs whose label would teach its ensemble most.",
    )
    serve_per_prompt = models.PositiveSmallIntegerField(
        default=0,
        help_text="Under an active policy, serve only this many of a prompt's candidate pairs at a time, the best "
                  "scored (0: serve them all).",
    )
    # The canary set (training.guards): this share of new non-battle comparisons is held out of all training;
    # once voted, each one's label is frozen (Comparison.canary_answer) and every reward model is scored on it.
    canary_rate = models.FloatField(
        default=0.0, help_text="Share of new comparisons held out of all training as the canary set (0 to 0.5)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    class Role(models.TextChoices):
        ANNOTATOR = "annotator"
        MANAGER = "manager"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField(help_text='A conversation: [{"role": "user", "content": "..."}, ...].')
    content_hash = models.CharField(max_length=64)
    source = models.CharField(max_length=100, blank=True)
    tags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "content_hash"], name="prompt_unique_in_project")
        ]

    def __str__(self) -> str:
        return self.messages[-1]["content"][:60] if self.messages else f"prompt {self.pk}"


class CheckpointQuerySet(models.QuerySet):
    def newest_first(self) -> CheckpointQuerySet:
        return self.order_by("-created_at", "-id")

    def incumbent(self, project) -> Checkpoint | None:
        """The checkpoint new candidates are measured against: the project's newest incumbent."""
        return self.filter(project=project, state=Checkpoint.State.INCUMBENT).newest_first().first()

    def newest_candidate(self, project) -> Checkpoint | None:
        return self.filter(project=project, state=Checkpoint.State.CANDIDATE).newest_first().first()


class Checkpoint(models.Model):
    """A source of completions: a local model folder, an endpoint, or imported data."""

    class State(models.TextChoices):
        CANDIDATE = "candidate"
        INCUMBENT = "incumbent"
        RETIRED = "retired"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="checkpoints")
    name = models.CharField(max_length=200)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    uri = models.CharField(max_length=500, blank=True, help_text="Local path or storage URI of the weights.")
    endpoint_url = models.URLField(blank=True, help_text="OpenAI-compatible base URL, if served.")
    endpoint_model = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.CANDIDATE)
    meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = CheckpointQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="checkpoint_name_unique")]

    def __str__(self) -> str:
        return self.name

    @property
    def model_path(self) -> str:
        """What the libraries load: a local folder for ``file://`` URIs, else the URI as it is (an alias, a hub id).

        An ``s3://`` checkpoint has no local folder until ``annotate.artifacts.model_source`` pulls it into
        this host's cache: jobs load through that, not through this property."""
        return urlparse(self.uri).path if self.uri.startswith("file://") else self.uri


class Completion(models.Model):
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="completions")
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="completions")
    text = models.TextField()
    text_hash = models.CharField(max_length=64)
    sampling = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    # An annotator's edit of this completion's text is a completion of the "human-edit" checkpoint whose
    # edited_from is the original (annotate.edits).
    edited_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="edits")
    edited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["prompt", "checkpoint", "text_hash"], name="completion_unique_per_source"
            )
        ]

    def __str__(self) -> str:
        return self.text[:60]


class ComparisonQuerySet(models.QuerySet):
    def open(self) -> ComparisonQuerySet:
        return self.filter(state=Comparison.State.OPEN)

    def not_voted_by(self, user) -> ComparisonQuerySet:
        return self.exclude(votes__annotator=user)


class Comparison(models.Model):
    class State(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"
        # Flagged by an annotator: out of everyone's queue until a manager reviews it.
        FLAGGED = "flagged", "flagged for review"
        # A manager upheld a flag: out of the queue, and its votes out of every export and snapshot.
        REMOVED = "removed", "removed after review"
        # A comparison with a known answer (annotate.gold): served to everyone at the project's gold rate,
        # never counted against the overlap, never in training data.
        GOLD = "gold", "gold (known answer)"
        # A candidate pair that active selection chose not to serve yet (Project.serve_per_prompt): out of the
        # queue until a refresh scores it among the best of its prompt.
        POOL = "pool", "candidate, not served"

    class Reason(models.TextChoices):
        RANDOM = "random"
        BATTLE = "battle", "checkpoint battle"
        ACTIVE = "active", "active selection"
        GOLD = "gold"
        IMPORTED = "imported"
        EDIT = "edit", "human edit"

    # Foreign keys led by an index below (queue_order, comparison_pair_unique) get no index of their
    # own: every index is written again when a vote closes the comparison.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="comparisons", db_index=False)
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="comparisons")
    # Positions are randomised once, at creation, and stored: A is what the annotator sees on the left.
    completion_a = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="+", db_index=False)
    completion_b = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="+")
    priority = models.IntegerField(default=0)
    reason = models.CharField(max_length=16, choices=Reason.choices, default=Reason.RANDOM)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    # Kept in step with the Vote rows inside the vote transaction; lets the queue avoid a COUNT per row.
    vote_count = models.PositiveIntegerField(default=0)
    # A hint for the queue, kept by annotate.queue: until this time the comparison is certainly
    # full (votes plus live leases reach the overlap), so the queue's scan steps over it without
    # counting leases. It may be earlier than the truth (NULL or past: count), never later.
    full_until = models.DateTimeField(null=True, blank=True, editable=False)
    # Gold only: the right choice ("a" or "b"), and how the pair was made (imported, or the degradation
    # applied to the worse side, with its details).
    gold_answer = models.CharField(max_length=8, blank=True)
    gold_method = models.JSONField(default=dict, blank=True)
    # Active selection's score for this pair (higher: serve sooner), from the latest reward model; the queue
    # reads only ``priority``, which the refresh sets from it.
    selection_score = models.FloatField(null=True, blank=True)
    # Canary set: held out of every training export and snapshot; ``canary_answer`` ("a", "b" or "tie") is the
    # label frozen when its votes were complete, which later votes do not change.
    canary = models.BooleanField(default=False)
    canary_answer = models.CharField(max_length=8, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ComparisonQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["project", "state", "-priority", "created_at", "id"], name="queue_order"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(completion_a=models.F("completion_b")), name="comparison_two_completions"
            ),
            models.UniqueConstraint(
                fields=["completion_a", "completion_b"], name="comparison_pair_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"comparison {self.pk}"


class Lease(models.Model):
    """A comparison reserved for one annotator until ``expires_at``, so abandoned work returns."""

    # Both keys lead an index below (one_lease_per_user, lease_by_annotator); no index of their own,
    # since every claim inserts a lease and every vote deletes one.
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="leases", db_index=False)
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases", db_index=False
    )
    expires_at = models.DateTimeField()
    # A skipped comparison keeps its (expired) lease row so it is not offered to the same person again.
    skipped = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["comparison", "annotator"], name="one_lease_per_user")]
        indexes = [models.Index(fields=["annotator", "expires_at"], name="lease_by_annotator")]


class Vote(models.Model):
    class Choice(models.TextChoices):
        A = "a", "A is better"
        B = "b", "B is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"

    class Strength(models.IntegerChoices):
        SLIGHTLY = 1, "slightly better"
        CLEARLY = 2, "clearly better"
        MUCH = 3, "much better"

    class Source(models.TextChoices):
        HUMAN = "human"
        IMPORTED = "imported"
        AI = "ai", "AI feedback"
        SIMULATED = "simulated"

    # Both keys lead an index below (one_vote_per_annotator, vote_by_annotator_day); no index of
    # their own, since each would be written on every vote.
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="votes", db_index=False)
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="votes", db_index=False
    )
    choice = models.CharField(max_length=8, choices=Choice.choices)
    # The winning completion itself, so the vote survives any change of display positions.
    winner = models.ForeignKey(Completion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    strength = models.PositiveSmallIntegerField(choices=Strength.choices, null=True, blank=True)
    rationale = models.TextField(blank=True)
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=64, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.HUMAN)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["comparison", "annotator"], name="one_vote_per_annotator"),
            models.UniqueConstraint(
                fields=["annotator", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="vote_idempotency_key_unique",
            ),
        ]
        indexes = [models.Index(fields=["annotator", "created_at"], name="vote_by_annotator_day")]

    def __str__(self) -> str:
        return f"{self.annotator} → {self.choice} on {self.comparison_id}"


class ExclusionQuerySet(models.QuerySet):
    def standing(self, project) -> ExclusionQuerySet:
        """The exclusions of ``project`` in force now (not lifted)."""
        return self.filter(project=project, lifted_at__isnull=True)


class Exclusion(models.Model):
    """A person whose votes are left out of training data in a project, and why; lifted when a manager
    reinstates them (the row stays: every exclusion is on the record)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="exclusions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reason = models.TextField()
    gold_votes = models.PositiveIntegerField(default=0)
    gold_correct = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", help_text="Empty: the gold rule excluded them.")
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    lift_reason = models.TextField(blank=True)

    objects = ExclusionQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["project", "user"], name="exclusion_by_person")]


class WithdrawnVote(models.Model):
    """A vote its annotator undid (``annotate.votes.vote_withdraw``): the Vote row is gone, this
    remembers it, so that a replay of the original request (same idempotency key) records nothing."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="+")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+",
                                  db_index=False)
    choice = models.CharField(max_length=8, choices=Vote.Choice.choices)
    strength = models.PositiveSmallIntegerField(choices=Vote.Strength.choices, null=True, blank=True)
    idempotency_key = models.CharField(max_length=64, blank=True)
    voted_at = models.DateTimeField()
    withdrawn_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["annotator", "idempotency_key"], name="withdrawn_by_key")]


class Flag(models.Model):
    """An annotator's report that a comparison is broken or harmful; a manager resolves it."""

    class Reason(models.TextChoices):
        BROKEN = "broken", "broken or unreadable"
        HARMFUL = "harmful", "harmful or unsafe content"
        PROMPT = "prompt", "the prompt itself is wrong"
        OTHER = "other", "something else"

    class Resolution(models.TextChoices):
        RETURNED = "returned", "returned to the queue"
        REMOVED = "removed", "removed from the project's data"

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="flags")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=16, choices=Reason.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["comparison", "annotator"], name="one_flag_per_annotator")]

    def __str__(self) -> str:
        return f"{self.annotator} flagged {self.comparison_id}: {self.reason}"


class ReliabilityFit(models.Model):
    """One fit of the annotator reliability model over a project's votes (``annotate.reliability``).

    ``people`` holds, per annotator id (as a string), competence, position bias, tie rate, votes and
    gold votes; each comparison's posterior is a ``ComparisonPosterior`` row."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="reliability_fits")
    method = models.CharField(max_length=32, default="dawid-skene")
    fitted_at = models.DateTimeField(default=timezone.now)
    votes = models.PositiveIntegerField(default=0)
    comparisons = models.PositiveIntegerField(default=0)
    gold_comparisons = models.PositiveIntegerField(default=0)
    last_vote_id = models.BigIntegerField(default=0, help_text="The newest vote the fit read.")
    people = models.JSONField(default=dict)
    stats = models.JSONField(default=dict, help_text="Iterations, convergence, log-likelihood, class prior.")

    class Meta:
        indexes = [models.Index(fields=["project", "-fitted_at"], name="reliability_latest")]


class ComparisonPosterior(models.Model):
    """A comparison's answer under one reliability fit: P(a is better) and the confidence of the answer."""

    fit = models.ForeignKey(ReliabilityFit, on_delete=models.CASCADE, related_name="posteriors", db_index=False)
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="+")
    p_a = models.FloatField()
    confidence = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["fit", "comparison"], name="one_posterior_per_fit")]


class Snapshot(models.Model):
    """An immutable, frozen export of a project's preferences: a file plus this row."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="snapshots")
    aggregation = models.CharField(max_length=16, default="majority")
    reliability_fit = models.ForeignKey(ReliabilityFit, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+", help_text="The fit whose posteriors labelled the pairs.")
    uri = models.CharField(max_length=500)
    format = models.CharField(max_length=32, default="pairs")
    count = models.PositiveIntegerField()
    votes = models.PositiveIntegerField(default=0, help_text="Votes the snapshot was built from.")
    sha256 = models.CharField(max_length=64)
    filters = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.project} snapshot {self.pk}"


class Event(models.Model):
    """Something that happened in a project, for the live feed and the webhooks (``annotate.events``)."""

    class Type(models.TextChoices):
        VOTE_RECORDED = "vote.recorded"
        SNAPSHOT_FROZEN = "snapshot.frozen"
        RUN_STATE = "run.state_changed"
        CHECKPOINT_PUBLISHED = "checkpoint.published"
        CHECKPOINT_PROMOTED = "checkpoint.promoted"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="events", db_index=False)
    type = models.CharField(max_length=32, choices=Type.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["project", "id"], name="event_feed")]


class Webhook(models.Model):
    """A URL that receives a project's events as signed JSON POSTs."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    # HMAC-SHA256 key of the signature header; shown to the project's managers.
    secret = models.CharField(max_length=64)
    # The event types sent; empty: every type.
    events = models.JSONField(default=list, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    def wants(self, event_type: str) -> bool:
        return self.active and (not self.events or event_type in self.events)

    def __str__(self) -> str:
        return f"webhook {self.pk} → {self.url}"


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one webhook: the delivery log."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)


class ApiToken(models.Model):
    """A bearer token; only its sha256 is stored, the token itself is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token {self.name or self.pk} for {self.user}"
