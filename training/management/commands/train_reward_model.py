"""python manage.py train_reward_model --project SLUG [--sync] [--set key=value ...]"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project
from training.reward import reward_model_start, reward_model_train_job
from training.runs import run_execute


def parse_settings(pairs: list[str]) -> dict:
    """``["epochs=2", "backbone=smollm2"]`` → ``{"epochs": 2, "backbone": "smollm2"}`` (values parsed as JSON when they can be)."""
    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"--set takes key=value, not {pair!r}")
        try:
            config[key] = json.loads(value)
        except ValueError:
            config[key] = value
    return config


class Command(BaseCommand):
    help = "Train a new reward-model version from the project's votes (queued on the gpu queue, or --sync)."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--sync", action="store_true", help="Run in the foreground with a progress bar.")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="A RewardConfig setting, e.g. --set backbone=smollm2 --set epochs=2")

    def handle(self, *args, project: str, sync: bool, set: list[str], **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            run = reward_model_start(project=target, config=parse_settings(set), reason="manage.py train_reward_model",
                                     enqueue=not sync)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if not sync:
            self.stdout.write(f"Queued reward-model run {run.pk} on the gpu queue.")
            return
        from tqdm import tqdm

        bar = tqdm(total=0, unit="step", desc=f"run {run.pk}")

        def echo(step: int, total: int, metrics: dict) -> None:
            bar.total = total
            bar.update(step - bar.n)
            if "loss" in metrics:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")

        try:
            run = run_execute(run.pk, reward_model_train_job, echo=echo)
        except Exception as error:
            raise CommandError(f"run {run.pk} failed: {error}") from error
        finally:
            bar.close()
        run.refresh_from_db()
        rm = run.reward_model_out
        self.stdout.write(
            self.style.SUCCESS(f"Published reward model v{rm.version}: held-out accuracy {rm.accuracy:.3f} ({rm.artifact_uri})")
        )
