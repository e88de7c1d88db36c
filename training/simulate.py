"""Simulated annotators: an oracle votes through the same queue and vote service as people."""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth import get_user_model

from annotate import services
from annotate.models import Membership, Project, Vote
from annotate.queue import comparison_next, comparison_skip
from annotate.votes import vote_record
from training.lib.oracles import DISAGREE, NO_VOTE, UNPARSEABLE, with_noise


@dataclass(frozen=True)
class SimulationResult:
    votes: int
    ties: int
    annotator: str
    # Pairs the oracle gave no vote on (skipped): an LLM judge that contradicted itself when the
    # answers were swapped, or whose reply was not A, B or TIE.
    disagreed: int = 0
    unparseable: int = 0


def simulated_annotator(*, project: Project, oracle_name: str, username: str | None = None):
    """The user an oracle votes as: one per oracle, a project member without a usable password."""
    name = username or "sim-" + re.sub(r"[^a-z0-9]+", "-", oracle_name.lower()).strip("-")[:140]
    user, created = get_user_model().objects.get_or_create(username=name)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    services.member_add(project=project, user=user, role=Membership.Role.ANNOTATOR)
    return user


def simulate_votes(
    *,
    project: Project,
    votes: int,
    oracle,
    noise: float = 0.0,
    seed: int = 0,
    username: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Cast up to ``votes`` votes with ``oracle`` (see training.lib.oracles); stops early when the queue is empty."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError("noise must be between 0 and 1")
    rng = random.Random(seed)
    user = simulated_annotator(project=project, oracle_name=oracle.name, username=username)
    source = Vote.Source.AI if oracle.is_ai else Vote.Source.SIMULATED
    cast = ties = 0
    abstained = {DISAGREE: 0, UNPARSEABLE: 0}
    while cast < votes:
        comparison = comparison_next(project=project, annotator=user)
        if comparison is None:
            break
        # The queue's one read carries what a person sees: the prompt and both answers.
        verdict = oracle.judge([comparison.prompt_messages], [comparison.text_a], [comparison.text_b])
        choice = with_noise(verdict, noise, rng)[0]
        if choice in NO_VOTE:  # no vote: the pair goes back to the queue for others, never to this oracle
            abstained[choice] += 1
            comparison_skip(comparison=comparison, annotator=user)
            continue
        vote_record(annotator=user, comparison_id=comparison.pk, choice=choice, source=source,
                    idempotency_key=f"sim-{comparison.pk}")
        cast += 1
        ties += choice == "tie"
        if progress:
            progress(cast, votes)
    return SimulationResult(votes=cast, ties=ties, annotator=user.username, disagreed=abstained[DISAGREE],
                            unparseable=abstained[UNPARSEABLE])
