"""PPO speed and memory: training.lib.ppo vs TRL 1.12's experimental PPOTrainer.

    .venv/bin/python bench/ppo_vs_trl.py                       # tiny random Llama (seconds per run)
    .venv/bin/python bench/ppo_vs_trl.py --model smollm2 --steps 3 --batch-size 8 --mini-batch-size 4 \
        --ppo-epochs 2 --max-new-tokens 16 --prompts 32 --runs ours,trl-best        # ~10 min on 2 busy cores

TRL removed PPO in 1.13 and the project pins 1.16, so the TRL side runs in
its own virtual environment, ``bench/.venv-trl112``, made on first use:
``python3 -m venv``, then ``pip install torch==2.13.0`` FIRST (the CPU wheel
on local disk; a looser pin pulls a multi-GB CUDA build), then
``trl==1.12.0`` with the project's transformers, accelerate and datasets
versions, so that only the trainer differs between the two sides.

Both sides get the same policy, the same prompts (chat-templated), the same
reward model folder (a tiny random Llama with a scalar head, written by
``rewardmodel.lib``; TRL loads it as ``AutoModelForSequenceClassification``
with the head copied in), and the same rollouts per step, minibatch size,
PPO epochs, max new tokens, temperature (top-p 1), KL coefficient, clip
ranges, value coefficient, learning rate and seed. Each run is its own
subprocess (a fresh peak-RSS figure), one after the other. Like TRL's own
example, TRL's value model starts from the reward model; ours is a linear
head on the policy's hidden states. TRL runs at its best CPU setting
(bf16=False, no gradient checkpointing), with bf16=False only, and at its
default (bf16=True, gradient checkpointing; steps capped: bf16 matmuls crawl
on a CPU without bf16 units, though on the tiny model overhead hides it);
the best one is quoted as the peer.

"episodes/s" is steady state: rollouts from the end of the first PPO step
to the end of the last (loading and the first step's warm-up excluded).
"episodes/CPU-s" divides by the worker's own CPU time over the same span:
on shared cores it is the steadier figure (use --threads 1 for it).
Writes bench/out/ppo_vs_trl.md and .json (``ppo_vs_trl-<model>.*`` for other models).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
VENV = ROOT / "bench" / ".venv-trl112"
#: The project's versions of TRL's dependencies, so both sides share them.
TRL_SIDE = ["trl==1.12.0", "transformers==5.23.0", "accelerate==1.15.0", "datasets==5.2.0"]
TOPICS = ("the sea", "a red bicycle", "bread", "the moon", "rain in spring", "a quiet library", "chess", "tea")


# --- preparation (project venv) -------------------------------------------------------------------------------------


def work_dir(model: str) -> Path:
    """Scratch folder of one model's runs (policy, reward model, prompts, per-run JSON and logs)."""
    return OUT / ("ppo_work" if model == "tiny" else f"ppo_work-{Path(model).name.lower()}")


def report_name(model: str) -> str:
    return "ppo_vs_trl" if model == "tiny" else f"ppo_vs_trl-{Path(model).name.lower()}"


def ensure_trl_venv() -> Path:
    """The TRL 1.12 interpreter, creating its venv when missing or wrong."""
    python = VENV / "bin" / "python"
    check = "import torch, trl; assert trl.__version__ == '1.12.0' and torch.__version__.startswith('2.13.0')"
    if not (python.exists() and subprocess.run([python, "-c", check], capture_output=True).returncode == 0):
        print(f"creating {VENV} (torch 2.13.0 CPU + trl 1.12.0) ...", flush=True)
        subprocess.run(["python3", "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # first, alone: see the module docstring
        subprocess.run([*pip, *TRL_SIDE], check=True)
        subprocess.run([python, "-c", check], check=True)
    (VENV / ".gitignore").write_text("*\n")  # as Python 3.13's venv does: git never sees the environment
    return python


def prepare(args: argparse.Namespace) -> dict[str, str]:
    """Write the policy (tiny) or resolve it (alias), the reward model and the prompts in the work folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaModel

    from rewardmodel.lib.backbones import resolve_model
    from rewardmodel.lib.model import RewardModel, save_reward_model
    from tests.tiny import WORDS, llama_tokenizer

    work = work_dir(args.model)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    if args.model == "tiny":
        tokenizer: Any = llama_tokenizer(chat=True)
        policy = work / "policy"
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        LlamaForCausalLM(config).save_pretrained(policy)
        tokenizer.save_pretrained(policy)
        texts = [" ".join(rng.choice(WORDS[-96:]) for _ in range(rng.randint(3, 12))) for _ in range(args.prompts)]
    else:
        policy = Path(resolve_model(args.model))
        tokenizer = AutoTokenizer.from_pretrained(policy)
        texts = [f"Write one short sentence about {rng.choice(TOPICS)}." for _ in range(args.prompts)]
    # The reward model shares the policy's vocabulary (TRL feeds it the policy's token ids) but is tiny.
    rm_config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    save_reward_model(RewardModel(LlamaModel(rm_config), tokenizer, pooling="last"), work / "reward", {})
    prompts = [[{"role": "user", "content": t}] for t in texts]
    (work / "prompts.json").write_text(json.dumps(prompts))
    return {"policy": str(policy), "reward": str(work / "reward")}


# --- workers (each in its own process) ------------------------------------------------------------------------------


def _mark(episodes: float) -> tuple[float, float, float, float]:
    """(wall s, this process's CPU s, episodes so far, peak RSS MiB so far) at the end of a PPO step."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return time.perf_counter(), time.process_time(), episodes, peak


def _summarise(marks: list[tuple[float, float, float, float]], start: tuple[float, float]) -> dict[str, float]:
    """Steady-state rates between the end of the first step and the end of the last (all of it for one step).

    Episodes per CPU-second counts the worker's own CPU time, so it barely
    moves when other jobs share the cores; episodes per wall-second does.
    """
    first = marks[0] if len(marks) > 1 else (start[0], start[1], 0.0, 0.0)
    last = marks[-1]
    return {"episodes_per_s": (last[2] - first[2]) / (last[0] - first[0]),
            "episodes_per_cpu_s": (last[2] - first[2]) / max(1e-9, last[1] - first[1]),
            "first_step_s": marks[0][0] - start[0], "train_seconds": last[0] - start[0], "steps": len(marks),
            "peak_rss_mib": last[3]}


def run_ours(args: argparse.Namespace, prompts: list) -> dict[str, Any]:
    from training.lib.ppo import train_ppo
    from training.lib.ppo_config import PPOConfig

    config = PPOConfig(model=args.policy, reward=args.reward, learning_rate=args.lr, batch_size=args.batch_size,
                       mini_batch_size=args.mini_batch_size, ppo_epochs=args.ppo_epochs,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=1.0,
                       kl_coef=args.kl_coef, whiten_advantages=True, steps=args.steps, seed=args.seed, device="cpu",
                       num_threads=args.threads)
    out = work_dir(args.model) / "ours-policy"
    shutil.rmtree(out, ignore_errors=True)
    marks: list[tuple[float, float, float, float]] = []
    start = (time.perf_counter(), time.process_time())
    result = train_ppo(config, prompts, out, lambda step, total, m: marks.append(_mark(m["episodes"])))
    h = result.history
    # Like TRL's on_train_begin, the clock starts after loading: history times run from the loop's start.
    return {**_summarise(marks, start), "first_step_s": h[0]["elapsed_s"], "train_seconds": h[-1]["elapsed_s"],
            "reward_first": h[0]["reward_mean"], "reward_last": h[-1]["reward_mean"], "kl_last": h[-1]["kl"],
            "response_length": sum(e["response_length"] for e in h) / len(h)}


def run_trl(args: argparse.Namespace, prompts: list, variant: str) -> dict[str, Any]:
    import datasets
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    bf16, checkpointing, steps = {"best": (False, False, args.steps), "fp32": (False, True, args.steps),
                                  "default": (True, True, min(args.steps, args.trl_bf16_steps))}[variant]
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    ids = [tokenizer(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"] for p in prompts]
    used = {token for row in ids for token in row} | {tokenizer.eos_token_id}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in used:
        # TRL finds padding by comparing ids with pad_token_id: SmolLM2's pad (= EOS, <|im_end|>) would also
        # hide every <|im_end|> inside the chat prompt. A special token that no prompt contains will do.
        tokenizer.pad_token_id = next(i for i in tokenizer.all_special_ids if i not in used)
    dataset = datasets.Dataset.from_list([{"input_ids": i} for i in ids])

    def scorer() -> Any:
        model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=torch.float32)
        head_file = Path(args.reward) / "reward_head.safetensors"
        if head_file.is_file():  # a folder saved before reward models were sequence-classification checkpoints
            with torch.no_grad():
                model.score.weight.copy_(load_file(str(head_file))["head.weight"])
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    marks: list[tuple[float, float, float, float]] = []
    logged: list[dict[str, float]] = []
    start = [(0.0, 0.0)]

    class Clock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            start[0] = (time.perf_counter(), time.process_time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.append(_mark(float(state.episode)))

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if kwargs.get("logs"):
                logged.append(dict(kwargs["logs"]))

    config = PPOConfig(
        output_dir=str(work_dir(args.model) / f"trl-{variant}"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, num_mini_batches=args.batch_size // args.mini_batch_size,
        num_ppo_epochs=args.ppo_epochs, total_episodes=steps * args.batch_size, response_length=args.max_new_tokens,
        temperature=args.temperature, kl_coef=args.kl_coef, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
        learning_rate=args.lr, stop_token="eos", num_sample_generations=0, bf16=bf16,
        gradient_checkpointing=checkpointing, use_cpu=True, seed=args.seed, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, local_rollout_forward_batch_size=args.batch_size,
    )
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=scorer(), value_model=scorer(), train_dataset=dataset, eval_dataset=dataset,
                         callbacks=[Clock()])
    trainer.train()
    scores = [entry["objective/scores"] for entry in logged if "objective/scores" in entry] or [float("nan")]
    kls = [entry["objective/kl"] for entry in logged if "objective/kl" in entry] or [float("nan")]
    return {**_summarise(marks, start[0]), "reward_first": scores[0], "reward_last": scores[-1], "kl_last": kls[-1],
            "response_length": float("nan")}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = work_dir(args.model)
    prompts = json.loads((work / "prompts.json").read_text())
    if args.worker == "ours":
        result = run_ours(args, prompts)
    else:
        result = run_trl(args, prompts, args.worker.removeprefix("trl-"))
    result["peak_rss_mib_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (work / f"{args.worker}.json").write_text(json.dumps(result))


# --- report ---------------------------------------------------------------------------------------------------------

ROWS = [("ours", "training.lib.ppo (fp32)"),
        ("trl-best", "TRL 1.12 best CPU (bf16=False, no grad. ckpt)"),
        ("trl-fp32", "TRL 1.12 bf16=False (grad. ckpt on, its default)"),
        ("trl-default", "TRL 1.12 default (bf16=True)")]


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    lines = [
        f"# PPO: training.lib.ppo vs TRL 1.12 experimental PPOTrainer ({args.model})",
        "",
        f"{args.batch_size} rollouts per step, minibatch {args.mini_batch_size}, {args.ppo_epochs} PPO epochs, "
        f"max {args.max_new_tokens} new tokens, temperature {args.temperature}, {args.steps} steps, "
        f"{args.prompts} prompts, {args.threads} thread(s), CPU, fp32 unless noted. Reward: a tiny random "
        "Llama reward model (same folder both sides), so rewards are comparable only within a row.",
        "",
        "Episodes/s (wall) and per CPU-second are steady state (after the first step); peak RSS is the "
        "worker's at the end of its last step (loading included, saving excluded).",
        "",
        "| run | episodes/s | episodes/CPU-s | first step s | train s | peak RSS MiB | reward first → last | KL last "
        "| steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, name in ROWS:
        if key in results:
            r = results[key]
            lines.append(f"| {name} | {r['episodes_per_s']:.3g} | {r['episodes_per_cpu_s']:.3g} | "
                         f"{r['first_step_s']:.1f} | {r['train_seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['reward_first']:.3f} → {r['reward_last']:.3f} | {r['kl_last']:.3f} | {r['steps']} |")
    peer = results.get("trl-best") or results.get("trl-fp32")
    if peer and "ours" in results:
        ours = results["ours"]
        lines += ["", f"Against TRL's best CPU setting: **{ours['episodes_per_s'] / peer['episodes_per_s']:.2f}x** "
                  f"episodes/s (wall), **{ours['episodes_per_cpu_s'] / peer['episodes_per_cpu_s']:.2f}x** "
                  f"episodes per CPU-second, **{ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}x** peak RSS."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (random Llama written to bench/out) or an alias/path")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (the 2 cores are shared)")
    parser.add_argument("--trl-bf16-steps", type=int, default=2, help="cap for TRL's (slow) bf16 default run")
    parser.add_argument("--runs", default="ours,trl-best,trl-fp32,trl-default")
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--reward", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.batch_size % args.mini_batch_size:
        parser.error("--batch-size must be a multiple of --mini-batch-size (TRL requires it)")

    trl_python = ensure_trl_venv() if any(r.startswith("trl") for r in args.runs.split(",")) else None
    paths = prepare(args)
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k not in ("worker", "policy", "reward", "runs") and v is not None]
    passthrough += [f"--policy={paths['policy']}", f"--reward={paths['reward']}"]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    work = work_dir(args.model)
    results: dict[str, dict] = {}
    for key in args.runs.split(","):
        python = str(trl_python) if key.startswith("trl") else sys.executable
        print(f"running {key} ...", flush=True)
        with open(work / f"{key}.log", "w") as log:
            done = subprocess.run([python, __file__, *passthrough, "--worker", key], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            print(f"{key} failed with exit code {done.returncode}; see {work / (key + '.log')}", file=sys.stderr)
            continue
        results[key] = json.loads((work / f"{key}.json").read_text())
    report = table(results, args)
    print(report)
    (OUT / f"{report_name(args.model)}.md").write_text(report)
    (OUT / f"{report_name(args.model)}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
