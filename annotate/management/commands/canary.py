"""Hold open comparisons back as the project's canary set, and freeze the labels of the voted ones.

    manage.py canary --project demo --hold 50 [--seed 0]
    manage.py canary --project demo            # freeze what is complete, and report

Held comparisons are open, unvoted, neither battles, gold nor edits; they stay in the queue but
out of every training export and snapshot (``annotate.canary``). New comparisons join the set by
themselves at the project's ``canary_rate``.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.canary import canary_counts, canary_freeze, canary_hold
from annotate.commands import project_get


class Command(BaseCommand):
    help = "Mark N open, unvoted comparisons as canaries (held out of training); freeze the complete ones."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="the project's slug")
        parser.add_argument("--hold", type=int, default=0, help="open, unvoted comparisons to hold out")
        parser.add_argument("--seed", type=int, default=0, help="which of the eligible comparisons are chosen")

    def handle(self, *args, project: str, hold: int, seed: int, **options):
        target = project_get(project)
        if hold < 0:
            raise CommandError("--hold must not be negative")
        if hold:
            marked = canary_hold(project=target, count=hold, seed=seed)
            self.stdout.write(f"held out {marked} comparisons of {target.slug} as canaries"
                              + ("" if marked == hold else f" (only {marked} were open and unvoted)"))
        frozen = canary_freeze(target)
        counts = canary_counts(target)
        self.stdout.write(f"{target.slug}: {counts['held']} canaries, {counts['frozen']} with a frozen label "
                          f"({frozen} frozen now), {counts['votes']} votes on them")
