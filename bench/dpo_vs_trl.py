"""DPO training speed: training.lib.dpo vs TRL DPOTrainer, same model, pairs and hyperparameters.

    .venv/bin/python bench/dpo_vs_trl.py                 # SmolLM2-135M-Instruct, 16 steps of 4 pairs
    .venv/bin/python bench/dpo_vs_trl.py --tiny --steps 5  # smoke run on a tiny random Llama
    .venv/bin/python bench/dpo_vs_trl.py --paired --threads 1 --runs trl-best,trl-fp32,trl-default

With --paired, each TRL run is started at the same time as one of ours and
the speed ratio is taken over the window where both were training: both see
the same load from other jobs, which on a shared machine moves absolute
figures by 3-10x within minutes.

Both sides: full fine-tune, fp32 (unless noted), batch 4, the same β, learning
rate (linear decay, no warmup), max_grad_norm, seed and the same pairs (one
epoch of exactly steps x batch pairs). Each run is its own subprocess, one
after the other (or in pairs, see above); each has its own peak RSS.

TRL runs: its default (bf16=True, gradient checkpointing, a reference model
forward every step; capped at --trl-bf16-steps because bf16 crawls on a CPU
without bf16 units, and bounded by --trl-bf16-timeout), bf16=False with the
rest default (the fair default on a CPU), and its best CPU setting (bf16=False,
no gradient checkpointing, precompute_ref_log_probs=True).

Data: prompts from data/demo/completions.jsonl when it exists (two checkpoints'
answers per prompt), else prompts from data/demo/prompts.jsonl with synthetic
answers of realistic, varied length; the shorter answer is "chosen".

Figures: "real tokens/s" counts the non-pad tokens of both sequences of a
pair (the prompt twice, as TRL counts them), in steady state: from the end of
the first optimizer step to the end of the last; "per CPU-s" divides by the
process's CPU time instead of wall time, which other jobs on a shared machine
disturb much less. "with ref." is the whole run (first step included) plus the
time spent precomputing reference log-probs (ours; TRL best does it inside its
constructor, timed as well). Writes bench/out/dpo_vs_trl.md and .json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
WORK = OUT / "dpo_work"  # our own folder: other benchmarks wipe bench/out/work
FILLER = (
    "the a of to and in is it that for on with as this be are by or from at an was can will your you we our "
    "they their which one more about when there so if has have not but all also how what time first then each "
    "make note example step try small plan day week morning keep start simple easy good better best help"
).split()


def _demo_groups() -> list[tuple[list[dict[str, str]], list[str]]]:
    """(prompt messages, answers) from data/demo/completions.jsonl, prompts with >= 2 distinct answers."""
    path = ROOT / "data" / "demo" / "completions.jsonl"
    if not path.exists():
        return []
    groups: dict[str, tuple[list[dict[str, str]], list[str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        prompt = row.get("messages") or row.get("prompt") or ""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = row.get("text") or row.get("completion") or row.get("response") or ""
        key = json.dumps(messages, sort_keys=True)
        entry = groups.setdefault(key, (messages, []))
        if text and text not in entry[1]:
            entry[1].append(text)
    return [g for g in groups.values() if len(g[1]) >= 2]


def make_pairs(n: int, seed: int) -> tuple[list[dict[str, Any]], str]:
    rng = random.Random(seed)
    groups = _demo_groups()
    source = "data/demo/completions.jsonl"
    if not groups:
        source = "data/demo/prompts.jsonl + synthetic answers"
        lines = (ROOT / "data" / "demo" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
        prompts = [json.loads(x)["messages"] for x in lines if x.strip()]

        def answer() -> str:
            words = int(min(150, max(3, rng.lognormvariate(3.0, 0.6))))  # median ~20 words, long tail
            return " ".join(rng.choice(FILLER) for _ in range(words)).capitalize() + "."

        groups = [(p, [answer(), answer()]) for p in prompts]
    pairs = []
    for i in range(n):
        messages, answers = groups[rng.randrange(len(groups))]
        a, b = rng.sample(answers, 2)
        chosen, rejected = (a, b) if len(a) <= len(b) else (b, a)  # the labelling rule: shorter is better
        pairs.append({"prompt_id": i, "prompt": messages, "chosen": chosen, "rejected": rejected, "tie": False})
    return pairs, source


Mark = tuple[float, float, float, float, float]  # (wall s, CPU s, real tokens so far, pairs so far, epoch s)


def _steady(marks: list[Mark]) -> dict[str, float]:
    """Rates between the end of the first step and the end of the last (the whole run if only one step).

    tokens_per_cpu_s divides by the CPU time of the process (all threads): on
    a machine shared with other jobs it moves much less than wall-clock rates.
    """
    first = marks[0] if len(marks) > 1 else (0.0, 0.0, 0.0, 0.0, 0.0)
    last = marks[-1]
    wall, cpu = last[0] - first[0], last[1] - first[1]
    tokens = last[2] - first[2]
    return {"tokens_per_s": tokens / wall, "pairs_per_s": (last[3] - first[3]) / wall,
            "tokens_per_cpu_s": tokens / max(cpu, 1e-9), "seconds_per_step": wall / max(1, len(marks) - 1),
            "clock": [(m[4], m[2]) for m in marks]}


def _tokens_at(clock: list[list[float]], t: float) -> float:
    """Real tokens done by epoch time t, linear between step ends (clock: [(epoch s, tokens)])."""
    for (t0, n0), (t1, n1) in zip(clock, clock[1:], strict=False):
        if t0 <= t <= t1:
            return n0 + (n1 - n0) * (t - t0) / max(t1 - t0, 1e-9)
    return clock[-1][1] if t > clock[-1][0] else clock[0][1]


def paired_rates(a: dict, b: dict) -> tuple[float, float] | None:
    """Steady-state tokens/s of two runs that ran at the same time, over the window where both did.

    Both saw the same load from other jobs at every moment, so the ratio is
    fair even on a busy machine. None if the windows do not overlap.
    """
    start = max(a["clock"][0][0], b["clock"][0][0])
    end = min(a["clock"][-1][0], b["clock"][-1][0])
    if end - start <= 0:
        return None
    return tuple((_tokens_at(r["clock"], end) - _tokens_at(r["clock"], start)) / (end - start) for r in (a, b))


def run_ours(args: argparse.Namespace, pairs: list[dict]) -> dict[str, Any]:
    import shutil

    from training.lib.dpo import DPOConfig, train_dpo

    out = WORK / "ours-ckpt"
    shutil.rmtree(out, ignore_errors=True)
    config = DPOConfig(model=args.model_path, beta=args.beta, learning_rate=args.lr, batch_size=args.batch_size,
                       max_steps=args.steps, max_length=args.max_length, max_prompt_length=args.max_length // 2,
                       seed=args.seed, num_threads=args.threads)
    marks: list[Mark] = []
    cpu0 = time.process_time()

    def progress(step: int, total: int, e: dict[str, float]) -> None:
        marks.append((e["elapsed_s"], time.process_time() - cpu0, e["tokens_seen"], e["pairs_seen"], time.time()))
        print(f"step {step}/{total} loss {e['loss']:.4f} {e['tokens_per_s']:.1f} tok/s", flush=True)

    result = train_dpo(config, pairs, out, progress)
    h, m = result.history, result.metrics
    shutil.rmtree(out, ignore_errors=True)  # 0.5 GB of weights nobody needs
    return {**_steady(marks), "steps": len(h), "losses": [e["loss"] for e in h],
            "margins": [e["margin"] for e in h], "padding_fraction": m["padding_fraction"],
            "train_seconds": m["train_seconds"], "ref_seconds": m["reference_seconds"],
            "tokens_per_s_with_ref": h[-1]["tokens_seen"] / (m["train_seconds"] + m["reference_seconds"]),
            "shared_prefix": bool(m["shared_prefix"]), "dropped": int(m["pairs_in"] - m["pairs_used"])}


def run_trl(args: argparse.Namespace, pairs: list[dict], variant: str) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    bf16, checkpointing, precompute, steps = {
        "default": (True, True, False, min(args.steps, args.trl_bf16_steps)),
        "fp32": (False, True, False, args.steps),
        "best": (False, False, True, args.steps),
    }[variant]
    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs[: steps * args.batch_size]]
    tok = AutoTokenizer.from_pretrained(args.model_path)
    marks: list[Mark] = []
    start = [0.0, 0.0]
    holder: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            start[:] = [time.perf_counter(), time.process_time()]

        def on_step_end(self, a: Any, state: Any, control: Any, **k: Any) -> None:
            # TRL counts attention_mask.sum() per batch: the same "real tokens" as ours.
            marks.append((time.perf_counter() - start[0], time.process_time() - start[1],
                          float(holder["trainer"]._total_train_tokens), float(state.global_step * args.batch_size),
                          time.time()))

    config = TRLConfig(
        output_dir=str(WORK / f"trl-{variant}"), per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        beta=args.beta, max_steps=steps, bf16=bf16, gradient_checkpointing=checkpointing,
        precompute_ref_log_probs=precompute, max_length=args.max_length, seed=args.seed, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, lr_scheduler_type="linear",
        warmup_steps=0, max_grad_norm=1.0, dataloader_pin_memory=False,
    )
    precompute_seconds = [0.0]
    original_precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self: Any, *a: Any, **k: Any) -> Any:  # TRL runs it inside its constructor
        t = time.perf_counter()
        try:
            return original_precompute(self, *a, **k)
        finally:
            precompute_seconds[0] += time.perf_counter() - t

    DPOTrainer._precompute_ref_logps = timed_precompute
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
    trainer = DPOTrainer(model=model, args=config, processing_class=tok, callbacks=[Clock()],
                         train_dataset=datasets.Dataset.from_list(rows))
    holder["trainer"] = trainer
    stats = {"real": 0, "padded": 0}
    collate = trainer.data_collator

    def counting(examples: list[dict]) -> dict:
        out = collate(examples)
        stats["real"] += int(out["attention_mask"].sum())
        stats["padded"] += out["attention_mask"].numel()
        return out

    trainer.data_collator = counting
    trainer.train()
    train_seconds = time.perf_counter() - start[0]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    margins = [e["rewards/margins"] for e in trainer.state.log_history if "rewards/margins" in e]
    return {**_steady(marks), "steps": len(marks), "losses": losses,
            "margins": margins, "padding_fraction": 1 - stats["real"] / max(1, stats["padded"]),
            "train_seconds": train_seconds, "ref_seconds": precompute_seconds[0],
            "tokens_per_s_with_ref": marks[-1][2] / (train_seconds + precompute_seconds[0]),
            "dropped": len(rows) - len(trainer.train_dataset)}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    pairs = json.loads((WORK / "pairs.json").read_text())
    if args.worker == "ours":
        result = run_ours(args, pairs)
    else:
        result = run_trl(args, pairs, args.worker.removeprefix("trl-"))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["argv"] = [a for a in sys.argv[1:] if a.split("=")[0] not in ("--worker", "--tag") and a != args.worker]
    (WORK / f"{args.worker}{args.tag}.json").write_text(json.dumps(result))


LABELS = [("ours", "training.lib.dpo (fp32; precomputed ref., shared prefix, bucketing)"),
          ("trl-best", "TRL best CPU (bf16=False, no grad. ckpt, precompute_ref_log_probs)"),
          ("trl-fp32", "TRL bf16=False, else default (grad. ckpt, ref. forward per step)"),
          ("trl-default", "TRL default (bf16=True)")]


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _row(name: str, r: dict) -> str:
    loss = f"{r['losses'][0]:.4f} → {r['losses'][-1]:.4f}" if r["losses"] else "n/a"
    return (f"| {name} | {r['tokens_per_s']:.1f} | {r['tokens_per_cpu_s']:.1f} | {r['tokens_per_s_with_ref']:.1f} | "
            f"{r['pairs_per_s']:.3f} | {r['seconds_per_step']:.1f} | {_fmt(r['padding_fraction'], '.1%')} | "
            f"{r['peak_rss_mib']:.0f} | {r['steps']} | {loss} |")


def table(results: dict[str, dict], failures: dict[str, str], args: argparse.Namespace, source: str) -> str:
    lines = [
        f"# DPO: training.lib.dpo vs TRL DPOTrainer ({args.model})",
        "",
        f"{args.steps * args.batch_size} pairs ({source}), full fine-tune, batch {args.batch_size}, "
        f"{args.steps} steps, β {args.beta}, lr {args.lr} (linear decay), max_length {args.max_length}, "
        f"{args.threads} thread(s) per run, fp32 unless noted. The machine is shared with other jobs: absolute "
        "figures are noisy" + ("; each TRL run ran at the same time as one of ours (\"ours @ X\"), and the ratios "
                               "compare the two over the window where both were training." if args.paired else "."),
        "",
        "| run | real tokens/s | per CPU-s | with ref. | pairs/s | s/step | padding | peak RSS MiB | steps "
        "| first → last loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, name in LABELS:
        for run, label in ((key, name), (f"ours@{key}", f"ours @ {key} (same time)")):
            if run in failures:
                lines.append(f"| {label} | {failures[run]} | | | | | | | | |")
            if run in results:
                lines.append(_row(label, results[run]))
    lines.append("")
    for key in ("trl-fp32", "trl-best", "trl-default"):
        if key not in results:
            continue
        peer, paired, ours = results[key], results.get(f"ours@{key}"), results.get("ours")
        rates = paired_rates(paired, peer) if paired else None
        if rates:
            lines.append(f"- vs {key}: **{rates[0] / rates[1]:.2f}x** real tokens/s over the "
                         f"{_overlap(paired, peer):.0f} s both trained ({rates[0]:.1f} vs {rates[1]:.1f}); "
                         f"{paired['tokens_per_cpu_s'] / peer['tokens_per_cpu_s']:.2f}x per CPU-second; "
                         f"{paired['tokens_per_s_with_ref'] / peer['tokens_per_s_with_ref']:.2f}x whole runs "
                         "counting reference precompute.")
        elif ours:
            lines.append(f"- vs {key}: **{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x** real tokens/s "
                         "(steady state, run one after the other), "
                         f"{ours['tokens_per_cpu_s'] / peer['tokens_per_cpu_s']:.2f}x per CPU-second, "
                         f"{ours['tokens_per_s_with_ref'] / peer['tokens_per_s_with_ref']:.2f}x "
                         "counting reference precompute.")
    ours = results.get("ours") or next((r for k, r in results.items() if k.startswith("ours@")), None)
    if ours:
        lines.append(f"- ours: shared prefix {'on' if ours['shared_prefix'] else 'off'}, "
                     f"reference precompute {ours['ref_seconds']:.1f} s, margins {ours['margins'][0]:.3f} → "
                     f"{ours['margins'][-1]:.3f}.")
    return "\n".join(lines) + "\n"


def _overlap(a: dict, b: dict) -> float:
    return min(a["clock"][-1][0], b["clock"][-1][0]) - max(a["clock"][0][0], b["clock"][0][0])


def _run_together(jobs: list[tuple[str, str]], passthrough: list[str], args: argparse.Namespace) -> list[int | None]:
    """Start the (worker, tag) jobs at once, wait for all; exit codes (None = timed out, killed)."""
    procs = []
    for worker_name, tag in jobs:
        (WORK / f"{worker_name}{tag}.json").unlink(missing_ok=True)
        log = open(WORK / f"{worker_name}{tag}.log", "w")  # noqa: SIM115 - closed below; TRL prints every step
        cmd = [sys.executable, __file__, *passthrough, "--worker", worker_name, f"--tag={tag}"]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log, worker_name))
    codes: list[int | None] = []
    for proc, log, worker_name in procs:
        try:
            codes.append(proc.wait(timeout=args.trl_bf16_timeout if worker_name == "trl-default" else None))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
        finally:
            log.close()
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead (smoke run)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl-bf16-steps", type=int, default=1, help="step cap for TRL's (slow) bf16 default")
    parser.add_argument("--trl-bf16-timeout", type=int, default=300, help="seconds before giving up on it")
    parser.add_argument("--runs", default="ours,trl-best,trl-fp32,trl-default")
    parser.add_argument("--reuse", action="store_true", help="take a run's result from an earlier run if saved")
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--paired", action="store_true",
                        help="run ours at the same time as each TRL run (fair ratios on a busy machine)")
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    WORK.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from tests.tiny import save_tiny_llama

        args.model, args.model_path = "tiny random llama", str(save_tiny_llama(WORK / "tiny", chat=True))
    else:
        from rewardmodel.lib.backbones import resolve_model

        args.model_path = resolve_model(args.model)
    pairs, source = make_pairs(args.steps * args.batch_size, args.seed)
    (WORK / "pairs.json").write_text(json.dumps(pairs))
    passthrough = [f"--model-path={args.model_path}", f"--steps={args.steps}", f"--batch-size={args.batch_size}",
                   f"--beta={args.beta}", f"--lr={args.lr}", f"--max-length={args.max_length}",
                   f"--seed={args.seed}", f"--threads={args.threads}", f"--trl-bf16-steps={args.trl_bf16_steps}"]
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    for key in args.runs.split(","):
        partner = "ours" if args.paired and key.startswith("trl-") and key != "trl-default" else None
        jobs = [(key, "")] + ([(partner, f"@{key}")] if partner else [])
        names = [w + tag for w, tag in jobs]
        saved = [WORK / f"{n}.json" for n in names]
        if args.reuse and all(p.exists() and json.loads(p.read_text()).get("argv") == passthrough for p in saved):
            results.update({n: json.loads(p.read_text()) for n, p in zip(names, saved, strict=True)})
            print(f"{' + '.join(names)}: reused", flush=True)
            continue
        print(f"running {' + '.join(names)} ...", flush=True)
        started = time.perf_counter()
        for name, code in zip(names, _run_together(jobs, passthrough, args), strict=True):
            if code is None:
                failures[name] = f"did not finish {args.trl_bf16_steps} step(s) in {args.trl_bf16_timeout} s"
            elif code != 0:
                failures[name] = f"failed (exit {code}, see {WORK / (name + '.log')})"
            else:
                results[name] = json.loads((WORK / f"{name}.json").read_text())
                print(f"{name}: {results[name]['tokens_per_s']:.1f} real tokens/s, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
    report = table(results, failures, args, source)
    print(report)
    (OUT / ("dpo_vs_trl-tiny.md" if args.tiny else "dpo_vs_trl.md")).write_text(report)
    (OUT / "dpo_vs_trl.json").write_text(json.dumps({"args": vars(args), "source": source, "results": results,
                                                     "failures": failures}, indent=2))


if __name__ == "__main__":
    main()
