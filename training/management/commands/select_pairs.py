"""python manage.py select_pairs --project SLUG [--candidates] [--no-rescore]"""
from __future__ import annotations

from django.core.management.base import BaseCommand
from tqdm import tqdm

from annotate.active import candidate_pairs_create
from annotate.commands import project_get
from training.selection import selection_refresh


class Command(BaseCommand):
    help = (
        "Refresh active selection now, in this process: score the project's unvoted pairs with its latest "
        "reward model and write their queue priorities (and, with serve_per_prompt, which are served)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--candidates", action="store_true",
                            help="First pair every two answers of each prompt (all C(k, 2) candidate pairs).")
        parser.add_argument("--no-rescore", action="store_true",
                            help="Re-choose from the stored scores without loading the reward model.")

    def handle(self, *args, project, candidates, no_rescore, **options):
        target = project_get(project)
        if candidates:
            self.stdout.write(f"{candidate_pairs_create(project=target)} new candidate pairs.")
        with tqdm(unit="completion", desc=f"scoring {target.slug}", disable=no_rescore) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = selection_refresh(project_id=target.pk, rescore=not no_rescore, progress=progress)
        self.stdout.write(
            f"{target.slug} ({result.policy}): {result.considered} unvoted pairs, {result.scored} scored, "
            f"{result.changed} updated, {result.pooled} held in the pool."
        )
