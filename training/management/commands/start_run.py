"""python manage.py start_run --project SLUG --kind {reward_model,dpo,ppo,generation} [--sync] [--set k=v ...]"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from training.management.commands.train_reward_model import parse_settings
from training.models import TrainingRun
from training.runs import run_execute
from training.starts import run_start
from training.tasks import job_for_kind


class Command(BaseCommand):
    help = "Start one stage of the loop by hand: a reward model, a DPO or PPO policy update, or a generation battle."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--kind", required=True, choices=TrainingRun.Kind.values)
        parser.add_argument("--checkpoint", help="The checkpoint to improve or sample (default: the incumbent).")
        parser.add_argument("--rival", action="append", help="generation: battle against this checkpoint (repeatable).")
        parser.add_argument("--prompts", type=int, default=64, help="generation: how many prompts to sample.")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A config setting.")
        parser.add_argument("--sync", action="store_true", help="Run in the foreground with a progress bar.")

    def handle(self, *args, project, kind, checkpoint, rival, prompts, set, sync, **options):
        from tqdm import tqdm

        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            run = run_start(project=target, kind=kind, config=parse_settings(set), checkpoint=checkpoint,
                            rivals=rival, prompts=prompts, reason="manage.py start_run", enqueue=not sync)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if not sync:
            self.stdout.write(f"Queued {kind} run {run.pk}.")
            return
        with tqdm(total=0, unit="step", desc=f"{kind} run {run.pk}") as bar:
            def echo(step, total, metrics):
                if bar.total != total:
                    bar.reset(total=total)
                bar.update(step - bar.n)

            try:
                run_execute(run.pk, job_for_kind(kind), echo=echo)
            except Exception as error:
                raise CommandError(f"run {run.pk} failed: {error}") from error
        run.refresh_from_db()
        self.stdout.write(self.style.SUCCESS(f"{kind} run {run.pk} {run.state}: {run.outputs}"))
