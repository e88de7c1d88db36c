"""A few rounds of the flywheel on the demo project, then the final checkpoint against the first.

    .venv/bin/python bench/loop.py --rounds 2 --oracle length:short

On a throwaway SQLite database under bench/out/: load the demo (SmolLM2-135M-Instruct
prompts and completions), let a rule oracle vote, then per round: retrain the reward
model, DPO from its snapshot, sample the candidate against the incumbent, let the
oracle vote on the battle, promote the candidate. Finally both the first and the final
checkpoint answer held-out prompts (never trained on) and the oracle judges them: the
win rate (ties count half) says whether the loop moved the policy the way the oracle
wanted. Wall time per stage is reported. Writes bench/out/loop.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))


def setup(fresh: bool) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "loop.sqlite3"
    if fresh:
        db.unlink(missing_ok=True)
        shutil.rmtree(OUT / "loop-artifacts", ignore_errors=True)
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ["ARTIFACTS_DIR"] = str(OUT / "loop-artifacts")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def held_out(project, count: int):
    """The last ``count`` demo prompts are removed from the project before any training."""
    from annotate.models import Prompt

    prompts = list(Prompt.objects.filter(project=project).order_by("-id")[:count])
    messages = [p.messages for p in prompts]
    Prompt.objects.filter(pk__in=[p.pk for p in prompts]).delete()
    return messages


def win_rate(first_uri: str, final_uri: str, prompts, oracle, max_new_tokens: int) -> tuple[float, int, int, int]:
    from training.lib.generation import GenerationConfig, generate_local

    def answers(uri: str):
        config = GenerationConfig(model=uri, temperature=0.3, max_new_tokens=max_new_tokens, seed=123)
        return [g.text for g in generate_local(config, prompts)]

    # A checkpoint's uri is a model alias ("smollm2") or a file:// folder.
    before, after = answers(first_uri.removeprefix("file://")), answers(final_uri.removeprefix("file://"))
    verdicts = oracle.judge(prompts, after, before)
    wins, losses, ties = verdicts.count("a"), verdicts.count("b"), verdicts.count("tie")
    return (wins + 0.5 * ties) / len(verdicts), wins, losses, ties


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test, ties left out: the chance of a split at least this uneven if neither were better."""
    from math import comb

    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--oracle", default="length:short")
    parser.add_argument("--initial-votes", type=int, default=120)
    parser.add_argument("--held-out", type=int, default=24)
    parser.add_argument("--dpo-steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-5, help="DPO learning rate")
    parser.add_argument("--battle-prompts", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    setup(fresh=True)
    from django.core.management import call_command

    from annotate.models import Checkpoint, Project
    from training.jobs import job_for_kind
    from training.lib.oracles import parse_oracle
    from training.loop import loop_settings, next_stage
    from training.runs import run_execute
    from training.simulate import simulate_votes
    from training.starts import run_start

    timings: list[tuple[str, float]] = []

    def timed(label, fn):
        started = time.perf_counter()
        result = fn()
        timings.append((label, time.perf_counter() - started))
        print(f"{label}: {timings[-1][1]:.1f} s", flush=True)
        return result

    timed("load demo", lambda: call_command("load_demo", verbosity=0))
    project = Project.objects.get(slug="demo")
    project.votes_per_comparison, project.retrain_threshold = 1, 0  # the bench drives every stage itself
    project.save()
    settings = loop_settings(project)
    settings.method, settings.battle_prompts = "dpo", args.battle_prompts
    settings.policy_config = {"max_steps": args.dpo_steps, "batch_size": 4, "learning_rate": args.lr, "max_length": 384}
    settings.sampling = {"max_new_tokens": args.max_new_tokens, "temperature": 0.7}
    settings.save()
    oracle = parse_oracle(args.oracle)
    evaluation = held_out(project, args.held_out)
    first = Checkpoint.objects.incumbent(project)
    timed("oracle votes on the demo comparisons",
          lambda: simulate_votes(project=project, votes=args.initial_votes, oracle=oracle))
    for number in range(1, args.rounds + 1):
        run = run_start(project=project, kind="reward_model", reason=f"bench round {number}", enqueue=False)
        while run is not None:
            timed(f"round {number}: {run.get_kind_display()}", lambda r=run: run_execute(r.pk, job_for_kind(r.kind)))
            run.refresh_from_db()
            if run.state != "succeeded":
                raise SystemExit(f"run {run.pk} {run.state}: {run.error[-1500:]}")
            previous, run = run, next_stage(run, enqueue=False)
        timed(f"round {number}: oracle votes on the battle",
              lambda n=number: simulate_votes(project=project, votes=args.battle_prompts, oracle=oracle, seed=n))
        candidate = previous.checkpoint_in  # the generation run's first checkpoint is the candidate
        Checkpoint.objects.filter(project=project, state="incumbent").update(state="retired")
        Checkpoint.objects.filter(pk=candidate.pk).update(state="incumbent")
    final = Checkpoint.objects.incumbent(project)
    rate, wins, losses, ties = timed(
        "held-out evaluation", lambda: win_rate(first.uri, final.uri, evaluation, oracle, args.max_new_tokens)
    )
    rows = "\n".join(f"| {label} | {seconds:.1f} |" for label, seconds in timings)
    report = f"""## The loop on the demo project (`bench/loop.py`)

Command: `.venv/bin/python bench/loop.py --rounds {args.rounds} --oracle {args.oracle} --dpo-steps {args.dpo_steps} --lr {args.lr}`
Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'CPU'}; SmolLM2-135M-Instruct on the CPU, fp32.

Oracle `{args.oracle}`: the final checkpoint `{final.name}` against the first `{first.name}` on {len(evaluation)}
held-out prompts: **win rate {rate:.0%}** ({wins} wins, {losses} losses, {ties} ties; ties count half;
two-sided sign test p = {sign_test(wins, losses):.3g}).

| stage | wall time (s) |
|---|---|
{rows}
"""
    (OUT / "loop.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
