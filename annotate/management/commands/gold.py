"""Gold comparisons from the command line (``annotate.gold``).

    manage.py gold --project demo --generate 40 [--seed 0] [--methods truncated,shuffled]
    manage.py gold --project demo --import gold.jsonl      # rows: {"prompt", "chosen", "rejected"}
    manage.py gold --project demo                          # how many there are, and how people score
"""
from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotate import gold
from annotate.commands import project_get
from annotate.models import Comparison
from annotate.services import InvalidInput


class Command(BaseCommand):
    help = "Make gold comparisons (known answers) from the project's own answers, import them, or report on them."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        what = parser.add_mutually_exclusive_group()
        what.add_argument("--generate", type=int, metavar="N", help="make up to N gold pairs by degrading answers")
        what.add_argument("--import", dest="path", metavar="FILE", help="JSONL of prompt, chosen, rejected")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--methods", default=",".join(gold.METHODS), help="comma-separated degradations")

    def handle(self, *args, project: str, generate: int | None, path: str | None, seed: int, methods: str,
               **options) -> None:
        row = project_get(project)
        try:
            if generate is not None:
                made = gold.gold_generate(project=row, count=generate, seed=seed,
                                          methods=tuple(m.strip() for m in methods.split(",") if m.strip()))
                by = {}
                for comparison in made:
                    by[comparison.gold_method["method"]] = by.get(comparison.gold_method["method"], 0) + 1
                self.stdout.write(f"{len(made)} gold pairs made: " + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
            elif path is not None:
                try:
                    stream = Path(path).open("rb")
                except OSError as error:
                    raise CommandError(f"cannot read {path}: {error}") from None
                with stream:
                    made = gold.gold_import_file(project=row, stream=stream, filename=path, seed=seed)
                self.stdout.write(f"{len(made)} gold pairs imported")
        except InvalidInput as error:  # an import's names the line and the field: nothing was stored
            raise CommandError(f"{path}, {error}" if path is not None and generate is None else str(error)) from None
        total = Comparison.objects.filter(project=row, state=Comparison.State.GOLD).count()
        self.stdout.write(f"{row.slug}: {total} gold pairs, served at {row.gold_rate:.0%} of each person's pairs")
        names = dict(get_user_model().objects.values_list("id", "username"))
        excluded = gold.excluded_ids(row)
        for user_id, score in sorted(gold.gold_accuracy(project=row).items(), key=lambda kv: kv[1].accuracy):
            low, high = score.interval
            flag = "  excluded from training" if user_id in excluded else ""
            self.stdout.write(f"  {names.get(user_id, user_id)}: {score.accuracy:.0%} of {score.votes} "
                              f"(95% {low:.0%}–{high:.0%}){flag}")

