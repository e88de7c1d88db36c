"""python manage.py start_run --project SLUG --kind {reward_model,dpo,ppo,generation} [--sync] [--set k=v ...]"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.commands import project_get
from training.jobs import job_for_kind
from training.models import TrainingRun
from training.runs import run_execute
from training.starts import inputs_by_name, run_start


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
    help = "Start one stage of the loop by hand: a reward model, a DPO or PPO policy update, or a generation battle."
    kind: str | None = None  # a fixed kind (the train_reward_model alias) takes no --kind
    called_as = "start_run"

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        if self.kind is None:
            parser.add_argument("--kind", required=True, choices=TrainingRun.Kind.values)
        else:
            parser.set_defaults(kind=self.kind)
        parser.add_argument("--checkpoint", help="The checkpoint to improve or sample (default: the incumbent).")
        parser.add_argument("--rival", action="append", help="generation: battle against this checkpoint (repeatable; "
                            "default: the incumbent).")
        parser.add_argument("--snapshot", type=int, help="dpo: the snapshot id to learn from (default: the latest "
                            "reward model's).")
        parser.add_argument("--reward-model", type=int, help="ppo: the reward-model version (default: the latest).")
        parser.add_argument("--prompts", type=int, help="generation: how many prompts to sample (same as "
                            "--set prompts=N; PPO takes --set prompts=N too).")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="A setting of this kind of run, e.g. --set epochs=2 --set backbone=smollm2.")
        parser.add_argument("--sync", action="store_true", help="Run in the foreground with a progress bar.")

    def handle(self, *args, project, kind, checkpoint, rival, snapshot, reward_model, prompts, set, sync, **options):
        target = project_get(project)
        config = parse_settings(set)
        if prompts is not None:
            if kind != TrainingRun.Kind.GENERATION:
                raise CommandError("--prompts is for generation runs (a PPO run takes --set prompts=N)")
            config["prompts"] = prompts
        try:
            inputs = inputs_by_name(target, checkpoint=checkpoint, rivals=rival, snapshot=snapshot,
                                    reward_model=reward_model)
            run = run_start(project=target, kind=kind, config=config, reason=f"manage.py {self.called_as}",
                            enqueue=not sync, **inputs)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if not sync:
            self.stdout.write(f"Queued {run.kind} run {run.pk} on the gpu queue.")
            return
        self._run_in_foreground(run)

    def _run_in_foreground(self, run: TrainingRun) -> None:
        with tqdm(total=0, unit="step", desc=f"{run.get_kind_display()} run {run.pk}") as bar:
            def echo(step, total, metrics):
                if bar.total != total:
                    bar.reset(total=total)
                bar.update(step - bar.n)
                if "loss" in metrics:
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")

            try:
                run_execute(run.pk, job_for_kind(run.kind), echo=echo)
            except Exception as error:
                raise CommandError(f"run {run.pk} failed: {error}") from error
        run.refresh_from_db()
        rm = run.reward_model_out
        if rm is not None:
            self.stdout.write(self.style.SUCCESS(
                f"Published reward model v{rm.version}: held-out accuracy "
                f"{'n/a' if rm.accuracy is None else format(rm.accuracy, '.3f')} ({rm.artifact_uri})"
            ))
        else:
            self.stdout.write(self.style.SUCCESS(f"{run.get_kind_display()} run {run.pk} {run.state}: {run.outputs}"))
