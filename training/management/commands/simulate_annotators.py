"""python manage.py simulate_annotators --project SLUG --votes N --oracle ORACLE [--noise P]"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.commands import project_get
from training.lib.oracles import parse_oracle
from training.simulate import simulate_votes


class Command(BaseCommand):
    help = (
        "Vote with an oracle through the same service as people. Oracles: length:short, length:long, "
        "contains:WORD, regex:PATTERN, rm:PATH (a reward model folder), judge:BASE_URL#MODEL (an LLM judge; "
        "its votes are marked as AI feedback)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--votes", type=int, required=True)
        parser.add_argument("--oracle", required=True)
        parser.add_argument("--noise", type=float, default=0.0, help="Probability of flipping each A/B verdict.")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--username", help="Vote as this user (default: one per oracle).")

    def handle(self, *args, project, votes, oracle, noise, seed, username, **options):
        target = project_get(project)
        try:
            judge = parse_oracle(oracle)
        except ValueError as error:
            raise CommandError(str(error)) from None
        with tqdm(total=votes, unit="vote", desc=judge.name) as bar:
            try:
                result = simulate_votes(project=target, votes=votes, oracle=judge, noise=noise, seed=seed,
                                        username=username, progress=lambda done, total: bar.update(done - bar.n))
            except ValueError as error:
                raise CommandError(str(error)) from None
        left = "" if result.votes == votes else " (the queue ran out)"
        abstained = (f"; no vote on {result.disagreed} pairs where the judge contradicted itself with the answers "
                     f"swapped and {result.unparseable} whose reply was not A, B or TIE"
                     if result.disagreed or result.unparseable else "")
        self.stdout.write(f"{result.annotator} cast {result.votes} votes, {result.ties} ties{abstained}{left}.")
