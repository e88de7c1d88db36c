"""python manage.py run_loop --project SLUG --rounds N --sync [--oracle ORACLE --votes-per-round K]"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.commands import project_get
from training.lib.oracles import parse_oracle
from training.loop import loop_settings, run_rounds


class Command(BaseCommand):
    help = (
        "Turn the flywheel: per round, retrain the reward model, update the policy (the project's loop method), "
        "sample the new candidate against the incumbent and queue the battle; optionally let an oracle vote on it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--rounds", type=int, default=1)
        parser.add_argument("--sync", action="store_true", help="Run in the foreground (the only mode for now).")
        parser.add_argument("--method", choices=["dpo", "ppo"], help="Override the project's loop method.")
        parser.add_argument("--oracle", help="Simulated annotators vote on each round's battle (see simulate_annotators).")
        parser.add_argument("--votes-per-round", type=int, default=0)
        parser.add_argument("--no-auto-promote", action="store_true",
                            help="Leave promotion to a manager: every round then improves the same incumbent.")

    def handle(self, *args, project, rounds, sync, method, oracle, votes_per_round, no_auto_promote, **options):
        target = project_get(project)
        if not sync:
            raise CommandError("run_loop runs in the foreground: pass --sync (the background loop is the project's "
                               "loop setting, which chains runs on the workers)")
        if method:
            settings = loop_settings(target)
            settings.method = method
            settings.save(update_fields=["method"])
        judge = None
        if oracle:
            try:
                judge = parse_oracle(oracle)
            except ValueError as error:
                raise CommandError(str(error)) from None
        bar = tqdm(total=0, unit="step")

        def on_stage(label, run):
            bar.reset(total=0)
            bar.set_description(f"{label} (run {run.pk})")

        def echo(step, total, metrics):
            if bar.total != total:
                bar.reset(total=total)
            bar.update(step - bar.n)

        try:
            results = run_rounds(project=target, rounds=rounds, oracle=judge, votes_per_round=votes_per_round,
                                 on_stage=on_stage, echo=echo, auto_promote=not no_auto_promote)
        except (RuntimeError, ValueError) as error:
            raise CommandError(str(error)) from None
        finally:
            bar.close()
        for r in results:
            self.stdout.write(f"round {r.round}: reward model v{r.reward_model}, candidate {r.checkpoint} from "
                              f"{r.parent or '-'}, {r.comparisons} battle comparisons queued, {r.votes} oracle votes")
            if r.trained_on:
                self.stdout.write(f"  policy update: {r.trained_on}")
            self.stdout.write(f"  promotion: {r.promotion}")
