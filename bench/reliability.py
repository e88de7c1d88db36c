"""Labels a team can trust: a simulated crowd, majority labels against the reliability model's.

    .venv/bin/python bench/reliability.py --seeds 0,1,2 --overlap 3,5

Per seed, on a throwaway SQLite database under bench/out/: a project of COMPARISONS pairs whose
better answer is known to the bench alone (answers are eight words drawn from 32; each word has a
hidden value and the better answer has the higher sum, ``VALUES``), and a crowd of PEOPLE annotators:

* careful: pick the better answer 92% of the time;
* noisy: 70%;
* position-biased: click the left answer 60% of the time whatever it says, otherwise pick the
  better one 90% of the time;
* spammers (SPAMMERS of the crowd, 25% by default): click at random.

Each pair gets OVERLAP votes from people drawn at random, through the app's vote service
(``annotate.votes.vote_record``); GOLD gold comparisons (their answer known to the app too) get
about 5% of each person's votes, as the project's default gold rate would. The gold rule's
exclusions are off (threshold 0) so that only the aggregation differs between the rows. Then:

* ``majority``: a snapshot with today's majority aggregation;
* ``model``: ``manage.py fit_reliability``'s fit (``annotate.reliability``) and a snapshot with
  ``aggregation="model"``;
* ``model, weighted``: the same snapshot, the reward model weighting each pair by its confidence;
* ``true parameters``: the same votes aggregated with the crowd's true accuracies and biases, which
  no aggregation can know: the ceiling of what these votes say (plain and weighted);
* ``clean``: the same pairs labelled with the hidden truth.

A reward model (tests/tiny.py's random two-layer BERT, hidden size 32: the 2-core machine cannot
train all-MiniLM-L6-v2 twelve times in a few minutes) trains on each and is scored on HELD_OUT
fresh pairs labelled with the truth. Writes bench/out/reliability.md.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

KINDS = ("careful", "noisy", "position-biased", "spammer")


def setup() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "reliability.sqlite3"
    db.unlink(missing_ok=True)
    shutil.rmtree(OUT / "reliability-artifacts", ignore_errors=True)
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ["ARTIFACTS_DIR"] = str(OUT / "reliability-artifacts")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOCAL_SECRET_KEY", "1")  # DEBUG is off: a key of its own (config/settings.py)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


#: The hidden preference: each of 32 answer words has a value; an answer's quality is the sum of its
#: words' values, and the better answer is the one of higher quality. A reward model has to learn 32
#: weights from pairs, so the number of pairs and their labels' noise both show in its accuracy.
_DRAW = random.Random(1234)
VALUES = {f"w{i}": _DRAW.gauss(0, 1) for i in range(32)}


def answer(rng: random.Random, length: int = 8) -> str:
    return " ".join(rng.choice(sorted(VALUES)) for _ in range(length))


def quality(text: str) -> float:
    return sum(VALUES.get(word, 0.0) for word in text.split())


def item(rng: random.Random) -> tuple[str, str, str]:
    """(prompt, better, worse): two answers of different quality."""
    from tests.tiny import WORDS

    prompt = " ".join(rng.choice(WORDS[-96:-32]) for _ in range(rng.randint(2, 6)))
    x, y = answer(rng), answer(rng)
    return (prompt, x, y) if quality(x) > quality(y) else (prompt, y, x)


def click(kind: str, better_side: str, rng: random.Random) -> str:
    worse_side = "b" if better_side == "a" else "a"
    if kind == "spammer":
        return rng.choice("ab")
    if kind == "position-biased" and rng.random() < 0.6:
        return "a"  # the left answer
    accuracy = {"careful": 0.92, "noisy": 0.70, "position-biased": 0.90}[kind]
    return better_side if rng.random() < accuracy else worse_side


def crowd_kinds(people: int, spammers: float) -> list[str]:
    n_spam = round(people * spammers)
    rest = people - n_spam
    n_careful, n_noisy = round(rest * 0.4), round(rest * 0.33)
    return (["careful"] * n_careful + ["noisy"] * n_noisy + ["position-biased"] * (rest - n_careful - n_noisy)
            + ["spammer"] * n_spam)


def build(seed: int, args) -> dict:
    """One project with its crowd's votes; returns what the rows need."""
    from django.contrib.auth import get_user_model

    from annotate import services
    from annotate.models import Comparison, Project
    from annotate.votes import vote_record

    rng = random.Random(seed)
    project = services.project_create(slug=f"crowd-o{args.overlap}-s{seed}", name=f"Crowd {seed}, {args.overlap} votes")
    Project.objects.filter(pk=project.pk).update(votes_per_comparison=args.overlap, retrain_threshold=0,
                                                 reliability_every=0, gold_threshold=0.0)
    project.refresh_from_db()
    first = services.checkpoint_get_or_create(project=project, name="one")
    second = services.checkpoint_get_or_create(project=project, name="two")
    comparisons, truth = [], {}
    for i in range(args.comparisons + args.gold):
        prompt_text, better, worse = item(rng)
        prompt, _ = services.prompt_get_or_create(project=project, messages=f"{prompt_text} {i}")
        one, _ = services.completion_get_or_create(prompt=prompt, checkpoint=first, text=better)
        two, _ = services.completion_get_or_create(prompt=prompt, checkpoint=second, text=worse)
        comparison, _ = services.comparison_create(first=one, second=two, rng=rng)
        truth[comparison.pk] = "a" if comparison.completion_a_id == one.pk else "b"
        comparisons.append(comparison)
    gold = comparisons[args.comparisons:]
    for comparison in gold:
        Comparison.objects.filter(pk=comparison.pk).update(state=Comparison.State.GOLD,
                                                           gold_answer=truth[comparison.pk])
    Project.objects.filter(pk=project.pk).update(gold_count=len(gold))
    kinds = crowd_kinds(args.people, args.spammers)
    users = [get_user_model().objects.create_user(username=f"o{args.overlap}s{seed}-{kind}-{i}")
             for i, kind in enumerate(kinds)]
    started = time.perf_counter()
    votes = 0
    for comparison in comparisons[:args.comparisons]:
        for k in rng.sample(range(len(users)), args.overlap):
            vote_record(annotator=users[k], comparison_id=comparison.pk,
                        choice=click(kinds[k], truth[comparison.pk], rng))
            votes += 1
    per_person = max(1, round(args.comparisons * args.overlap / len(users) * 0.05 / 0.95))
    for k, user in enumerate(users):
        for comparison in rng.sample(gold, min(per_person, len(gold))):
            vote_record(annotator=user, comparison_id=comparison.pk, choice=click(kinds[k], truth[comparison.pk], rng))
            votes += 1
    return {"project": project, "truth": truth, "kinds": kinds, "users": users, "votes": votes,
            "vote_s": time.perf_counter() - started}


def snapshot_pairs(snapshot) -> list:
    from annotate.snapshots import snapshot_path
    from rewardmodel.lib.data import read_pairs

    return read_pairs(snapshot_path(snapshot))


def clean_pairs(project, truth: dict) -> list:
    from annotate.models import Comparison
    from rewardmodel.lib.data import PreferencePair

    pairs = []
    for c in Comparison.objects.filter(project=project, pk__in=list(truth)).exclude(state="gold").select_related(
            "prompt", "completion_a", "completion_b"):
        a, b = c.completion_a.text, c.completion_b.text
        chosen, rejected = (a, b) if truth[c.pk] == "a" else (b, a)
        pairs.append(PreferencePair(prompt=c.prompt.messages, chosen=chosen, rejected=rejected, prompt_id=c.prompt_id))
    return pairs


def chance_left(kind: str, better_side: str) -> float:
    """P(click "a" | the better answer is on ``better_side``) for a person of ``kind`` (as ``click`` draws)."""
    if kind == "spammer":
        return 0.5
    accuracy = {"careful": 0.92, "noisy": 0.70, "position-biased": 0.90}[kind]
    right = accuracy if better_side == "a" else 1 - accuracy
    return 0.6 + 0.4 * right if kind == "position-biased" else right


def oracle_pairs(project, kind_of: dict[int, str]) -> list:
    """The best any aggregation of these votes can do: each pair's posterior under the crowd's TRUE
    parameters (which the app never knows), with its confidence."""
    from annotate.models import Comparison, Vote
    from rewardmodel.lib.data import PreferencePair

    log_odds: dict[int, float] = {}
    for comparison_id, user_id, choice in Vote.objects.filter(comparison__project=project).exclude(
            comparison__state="gold").values_list("comparison_id", "annotator_id", "choice"):
        kind = kind_of[user_id]
        p_if_a, p_if_b = chance_left(kind, "a"), chance_left(kind, "b")
        if choice == "b":
            p_if_a, p_if_b = 1 - p_if_a, 1 - p_if_b
        log_odds[comparison_id] = log_odds.get(comparison_id, 0.0) + math.log(p_if_a / p_if_b)
    pairs = []
    for c in Comparison.objects.filter(pk__in=list(log_odds)).select_related("prompt", "completion_a", "completion_b"):
        p_a = 1 / (1 + math.exp(-log_odds[c.pk]))
        a, b = c.completion_a.text, c.completion_b.text
        chosen, rejected = (a, b) if p_a >= 0.5 else (b, a)
        pairs.append(PreferencePair(prompt=c.prompt.messages, chosen=chosen, rejected=rejected, prompt_id=c.prompt_id,
                                    confidence=max(p_a, 1 - p_a)))
    return pairs


def label_accuracy(pairs: list) -> float:
    return sum(quality(p.chosen) > quality(p.rejected) for p in pairs if not p.tie) / max(1, len(pairs))


def train_and_score(pairs: list, held_out: list, *, seed: int, args, backbone: Path, weighted: bool = False) -> float:
    from rewardmodel.lib.config import RewardConfig
    from rewardmodel.lib.model import load_reward_model
    from rewardmodel.lib.score import score
    from rewardmodel.lib.train import train_reward_model

    config = RewardConfig(backbone=str(backbone), learning_rate=3e-3, epochs=args.epochs, batch_size=16,
                          eval_fraction=0.0, warmup_ratio=0.1, num_threads=args.threads, seed=seed,
                          weight_by_confidence=weighted, pooling=args.pooling)
    with tempfile.TemporaryDirectory() as out:
        train_reward_model(config, pairs, Path(out) / "rm")
        model = load_reward_model(Path(out) / "rm")
        prompts = [p.prompt for p in held_out]
        chosen = score(model, prompts, [p.chosen for p in held_out])
        rejected = score(model, prompts, [p.rejected for p in held_out])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held_out)


def one_seed(seed: int, args, backbone: Path) -> dict:
    from annotate.reliability import reliability_fit
    from annotate.snapshots import snapshot_freeze
    from rewardmodel.lib.data import PreferencePair

    built = build(seed, args)
    project, truth = built["project"], built["truth"]
    started = time.perf_counter()
    fit = reliability_fit(project=project)
    fit_s = time.perf_counter() - started
    majority = snapshot_pairs(snapshot_freeze(project=project, aggregation="majority"))
    model = snapshot_pairs(snapshot_freeze(project=project, aggregation="model"))
    clean = clean_pairs(project, truth)
    oracle = oracle_pairs(project, {user.pk: kind for kind, user in zip(built["kinds"], built["users"], strict=True)})
    rng = random.Random(10_000 + seed)
    held_out = [PreferencePair(prompt=p, chosen=x, rejected=y) for p, x, y in (item(rng) for _ in range(args.held_out))]
    people = {kind: [] for kind in KINDS}
    for kind, user in zip(built["kinds"], built["users"], strict=True):
        person = fit.people.get(str(user.pk))
        if person:
            people[kind].append((person["competence"], person["position_bias"]))
    rows = {}
    for name, pairs, weighted in (("majority", majority, False), ("model", model, False),
                                  ("model, weighted", model, True), ("true parameters", oracle, False),
                                  ("true parameters, weighted", oracle, True), ("clean", clean, False)):
        t = time.perf_counter()
        accuracy = train_and_score(pairs, held_out, seed=seed, args=args, backbone=backbone, weighted=weighted)
        rows[name] = {"pairs": len(pairs), "labels": label_accuracy(pairs), "held_out": accuracy}
        print(f"seed {seed} {name:<16} pairs {len(pairs):4d}  labels right {rows[name]['labels']:.3f}  "
              f"held-out {accuracy:.3f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    return {"rows": rows, "people": people, "fit_s": fit_s, "fit": fit, "votes": built["votes"],
            "vote_s": built["vote_s"]}


def mean(values) -> float:
    return statistics.fmean(values) if values else float("nan")


def report(by_overlap: dict[int, dict[int, dict]], args, seconds: float) -> str:
    seeds = sorted(next(iter(by_overlap.values())))
    lines = [
        "# Labels a team can trust: majority against the reliability model (`bench/reliability.py`)",
        "",
        f"Command: `.venv/bin/python bench/reliability.py --seeds {','.join(map(str, seeds))} "
        f"--comparisons {args.comparisons} --overlap {','.join(map(str, by_overlap))} --people {args.people} "
        f"--spammers {args.spammers} --gold {args.gold} --held-out {args.held_out} --epochs {args.epochs}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU; {seconds:.0f} s in all. Reward model: "
        "tests/tiny.py's random BERT (2 layers, hidden 32), lr 3e-3, batch 16, "
        f"{args.epochs} epochs, fp32.",
        "",
        f"Crowd of {args.people}: {', '.join(f'{k} x{v}' for k, v in _count(crowd_kinds(args.people, args.spammers)))}; "
        f"{args.comparisons} pairs, {args.gold} gold pairs (~5% of each person's votes); "
        f"held-out: {args.held_out} fresh pairs labelled with the hidden truth. \"true parameters\": the same votes "
        "aggregated with the crowd's real accuracies and biases, which no aggregation can know (the ceiling of "
        "what the votes say).",
        "",
    ]
    for overlap, results in by_overlap.items():
        lines += _section(overlap, results)
    return "\n".join(lines)


def _section(overlap: int, results: dict[int, dict]) -> list[str]:
    names = ("majority", "model", "model, weighted", "true parameters", "true parameters, weighted", "clean")
    seeds = sorted(results)
    lines = [
        f"### {overlap} votes per pair",
        "",
        "Reward model held-out accuracy on the true preference (mean over seeds; per seed in brackets), and the share "
        "of training labels that are right:",
        "",
        "| labels | held-out accuracy | vs clean (points) | training labels right | pairs |",
        "|---|---|---|---|---|",
    ]
    clean = mean(results[s]["rows"]["clean"]["held_out"] for s in seeds)
    for name in names:
        held = [results[s]["rows"][name]["held_out"] for s in seeds]
        labels = [results[s]["rows"][name]["labels"] for s in seeds]
        pairs = [results[s]["rows"][name]["pairs"] for s in seeds]
        lines.append(f"| {name} | **{mean(held):.3f}** ({', '.join(f'{h:.3f}' for h in held)}) | "
                     f"{100 * (mean(held) - clean):+.1f} | {mean(labels):.3f} | {round(mean(pairs))} |")
    lines += ["", "What the fit found (mean over the seeds' people of each kind):", "",
              "| kind | competence | left bias |", "|---|---|---|"]
    for kind in KINDS:
        found = [p for s in seeds for p in results[s]["people"][kind]]
        lines.append(f"| {kind} | {mean(c for c, _ in found):.2f} | {mean(b for _, b in found):+.2f} |")
    fits = [results[s]["fit"] for s in seeds]
    lines += ["", f"The fit: {mean(results[s]['fit_s'] for s in seeds):.2f} s for "
              f"{round(mean(f.votes for f in fits))} votes on {round(mean(f.comparisons for f in fits))} comparisons "
              f"({', '.join(str(f.stats['iterations']) for f in fits)} EM rounds). Recording the votes through "
              f"the vote service took {mean(results[s]['vote_s'] for s in seeds):.1f} s per seed.", ""]
    return lines


def _count(kinds: list[str]) -> list[tuple[str, int]]:
    return [(kind, kinds.count(kind)) for kind in KINDS if kinds.count(kind)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--comparisons", type=int, default=600)
    parser.add_argument("--overlap", default="3", help="votes per pair; several, comma-separated, one section each")
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--spammers", type=float, default=0.25)
    parser.add_argument("--gold", type=int, default=40)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pooling", default="auto", help="the reward model's pooling (auto: [CLS] for BERT)")
    parser.add_argument("--out", default=str(OUT / "reliability.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    setup()
    from tests.tiny import save_tiny_bert

    with tempfile.TemporaryDirectory() as folder:
        backbone = save_tiny_bert(Path(folder) / "bert")
        by_overlap = {}
        for overlap in map(int, args.overlap.split(",")):
            each = argparse.Namespace(**{**vars(args), "overlap": overlap})
            by_overlap[overlap] = {seed: one_seed(seed, each, backbone) for seed in map(int, args.seeds.split(","))}
    text = report(by_overlap, args, time.perf_counter() - started)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
