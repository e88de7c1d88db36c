"""Fit the annotator reliability model now: ``manage.py fit_reliability --project SLUG``."""
from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotate.commands import project_get
from annotate.reliability import reliability_fit
from annotate.services import InvalidInput


class Command(BaseCommand):
    help = ("Fit the pairwise Dawid-Skene reliability model over the project's votes (gold as known answers) "
            "and print each person's competence and position bias.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--json", action="store_true", help="print the fit as JSON")

    def handle(self, *args, project: str, json: bool, **options) -> None:
        project_row = project_get(project)
        try:
            fit = reliability_fit(project=project_row)
        except InvalidInput as error:
            raise CommandError(str(error)) from None
        names = dict(get_user_model().objects.filter(pk__in=[int(pk) for pk in fit.people])
                     .values_list("pk", "username"))
        people = {names.get(int(pk), pk): person for pk, person in fit.people.items()}
        if json:
            self.stdout.write(_dumps({"fit": fit.pk, "votes": fit.votes, "comparisons": fit.comparisons,
                                      "gold_comparisons": fit.gold_comparisons, "stats": fit.stats, "people": people}))
            return
        self.stdout.write(f"fit {fit.pk}: {fit.votes} votes on {fit.comparisons} comparisons "
                          f"({fit.gold_comparisons} gold), {len(people)} people, {fit.stats['iterations']} EM rounds")
        self.stdout.write(f"{'person':<24} {'competence':>10} {'left bias':>10} {'ties':>6} {'votes':>6} {'gold':>5}")
        for name, p in sorted(people.items(), key=lambda item: item[1]["competence"]):
            self.stdout.write(f"{str(name)[:24]:<24} {p['competence']:>10.2f} {p['position_bias']:>+10.2f} "
                              f"{p['tie_rate']:>6.2f} {p['votes']:>6} {p['gold_votes']:>5}")


def _dumps(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
