"""A few rounds of the flywheel on the demo project, then the final checkpoint against the first.

    .venv/bin/python bench/loop.py --rounds 3 --oracle length:short

On a throwaway SQLite database under bench/out/: load the demo (SmolLM2-135M-Instruct
prompts and completions), let a rule oracle vote, then run ``run_loop``'s rounds: retrain the
reward model, promote by the leaderboard's rule, DPO from the incumbent on the votes since its
snapshot, sample the candidate against the incumbent, let the oracle vote on the battle.
Finally both the first and the final
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
    os.environ.setdefault("LOCAL_SECRET_KEY", "1")  # DEBUG is off: a key of its own (config/settings.py)
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


def win_rate(first_uri: str, final_uri: str, prompts, oracle, max_new_tokens: int, samples: int):
    """The final checkpoint against the first on ``prompts``, ``samples`` answers each (seeds 123, 124, ...)."""
    from training.lib.generation import GenerationConfig, generate_local

    def answers(uri: str, seed: int):
        config = GenerationConfig(model=uri, temperature=0.3, max_new_tokens=max_new_tokens, seed=seed)
        return [g.text for g in generate_local(config, prompts)]

    verdicts = []
    for sample in range(samples):
        # A checkpoint's uri is a model alias ("smollm2") or a file:// folder.
        before = answers(first_uri.removeprefix("file://"), 123 + sample)
        after = answers(final_uri.removeprefix("file://"), 123 + sample)
        verdicts += oracle.judge(prompts, after, before)
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--oracle", default="length:short")
    parser.add_argument("--initial-votes", type=int, default=120)
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2, help="answers per held-out prompt and checkpoint")
    parser.add_argument("--dpo-steps", type=int, default=0, help="0: one epoch over the run's snapshot (the default)")
    parser.add_argument("--lr", type=float, default=1e-5, help="DPO learning rate")
    parser.add_argument("--battle-prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--train-on", choices=["new", "all"], default="new")
    args = parser.parse_args()
    setup(fresh=True)
    from django.core.management import call_command

    from annotate.models import Checkpoint, Project
    from training.lib.oracles import parse_oracle
    from training.loop import loop_settings, run_rounds
    from training.models import TrainingRun
    from training.simulate import simulate_votes

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
    settings.method, settings.battle_prompts, settings.train_on = "dpo", args.battle_prompts, args.train_on
    settings.policy_config = {"batch_size": 4, "learning_rate": args.lr, "max_length": 384}
    if args.dpo_steps:
        settings.policy_config["max_steps"] = args.dpo_steps
    settings.sampling = {"max_new_tokens": args.max_new_tokens, "temperature": 0.7}
    settings.save()
    oracle = parse_oracle(args.oracle)
    evaluation = held_out(project, args.held_out)
    first = Checkpoint.objects.incumbent(project)
    timed("oracle votes on the demo comparisons",
          lambda: simulate_votes(project=project, votes=args.initial_votes, oracle=oracle))
    # The same rounds as `manage.py run_loop --sync --oracle ...`: automatic promotion on, simulated votes
    # counting as people's, each DPO update from the incumbent on the votes since its snapshot.
    results = []
    for number in range(1, args.rounds + 1):
        results += timed(f"round {number} (reward model, DPO, battle, votes, promotion)", lambda: run_rounds(
            project=project, rounds=1, oracle=oracle, votes_per_round=args.battle_prompts))
        result = results[-1]
        results[-1] = result.__class__(**{**result.__dict__, "round": number})
        print(f"  {result.trained_on}\n  promotion: {result.promotion}", flush=True)
    dpo = {r.checkpoint_out.name: r for r in TrainingRun.objects.filter(project=project, kind="dpo")
           .select_related("checkpoint_out", "checkpoint_in", "snapshot")}
    final = Checkpoint.objects.incumbent(project)
    if final.pk == first.pk:  # nothing was promoted: judge the last candidate
        final = Checkpoint.objects.get(name=results[-1].checkpoint)
    rate, wins, losses, ties = timed(
        "held-out evaluation",
        lambda: win_rate(first.uri, final.uri, evaluation, oracle, args.max_new_tokens, args.samples))
    rounds = "\n".join(
        f"| {r.round} | {r.parent} | `{r.checkpoint}` | {dpo[r.checkpoint].snapshot.count} | "
        f"{dpo[r.checkpoint].step} | {r.policy_seconds:.1f} | {r.promotion} |"
        for r in results)
    rows = "\n".join(f"| {label} | {seconds:.1f} |" for label, seconds in timings)
    ratio = results[-1].policy_seconds / results[0].policy_seconds
    report = f"""## The loop on the demo project (`bench/loop.py`)

Command: `.venv/bin/python bench/loop.py --rounds {args.rounds} --oracle {args.oracle} --held-out {args.held_out} --samples {args.samples} --battle-prompts {args.battle_prompts} --lr {args.lr} --train-on {args.train_on}{f" --dpo-steps {args.dpo_steps}" if args.dpo_steps else ""}`
Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'CPU'}; SmolLM2-135M-Instruct on the CPU, fp32.

The rounds are `run_loop`'s (`training.loop.run_rounds`): the reward model retrains, the loop promotes the newest
candidate whose interval clears the incumbent's (at least 32 battle votes), DPO starts from the incumbent and learns
from {"the votes since its snapshot" if args.train_on == "new" else "the whole snapshot"} (one epoch), the candidate
battles the incumbent on {args.battle_prompts} prompts and the simulated annotator (`{args.oracle}`, a preference
SmolLM2 does not have) votes on the battle.

Oracle `{args.oracle}`: the final checkpoint `{final.name}` against the first `{first.name}` on {len(evaluation)}
held-out prompts, {args.samples} answers each: **win rate {rate:.0%}** ({wins} wins, {losses} losses, {ties} ties;
ties count half; two-sided sign test p = {sign_test(wins, losses):.3g}).

Round {results[-1].round}'s policy update took **{ratio:.2f}x** round 1's.

| round | from | candidate | DPO pairs | DPO steps | DPO wall time (s) | promotion after the round's votes |
|---|---|---|---|---|---|---|
{rounds}

| stage | wall time (s) |
|---|---|
{rows}
"""
    (OUT / "loop.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
