"""Data-parallel training over several processes, one per GPU, started by torchrun.

    torchrun --standalone --nproc-per-node 4 -m training.lib.distributed SPEC.json

The libraries' entry points stay the same (`train_reward_model`, `train_dpo`): inside a process
that torchrun started they find their `Team` (rank, world size) and split every micro-batch of the
one-process plan between the ranks. Each rank runs forward and backward on its share, its loss
scaled by its share of the global batch (its pairs, or its bootstrap weight, over the batch's);
after the last micro-batch of an optimizer step the gradients are summed across ranks
(`Team.sum_gradients`), so every rank takes the same AdamW step as one process would on the whole
batch, to rounding. Logged figures are summed across ranks before rank 0 reports them.

Why not `DistributedDataParallel`: the shares of a batch differ in size (packed rows,
length-bucketed batches, a short last batch of an epoch leaves some ranks nothing), and DDP needs
every rank to run the same forwards; the libraries also swap the LoRA adapters off for reference
passes, which DDP's wrapper hides. Summing once per optimizer step is what DDP does under
`no_sync()` with gradient accumulation, minus overlapping the transfer with the backward pass.
Each rank holds a whole replica (weights, gradients, AdamW state) for LoRA and QLoRA; full
fine-tuning of a reward model, a DPO or a PPO policy by default shards them over the ranks instead
(each config's ``parallel``; FSDP2: `training.lib.sharding`, `rewardmodel.lib.sharding`): each rank
keeps 1/N, gathers each layer's weights just before it runs, and FSDP's reduce-scatter sums the
gradients (the same loss scaling; no `sum_gradients`). Every forward of a sharded model is
collective, so there a rank whose share is empty runs one pair with its loss multiplied by 0, the
reference pass runs as many batches on every rank, and sampling keeps every rank stepping until
all are done (``synced_gpus``).

Rank 0 alone evaluates and publishes, after a barrier (a sharded policy's whole weights are
gathered onto its CPU first, every rank taking part): a checkpoint folder appears (temporary
folder, verified reload, rename) only once every rank finished its last step. If any rank dies,
torchrun stops the others and exits non-zero; nothing is published.

Run as a module, this is the worker torchrun starts: it reads a spec (kind, config, data, out,
lineage, result; data: pairs as JSONL, or for PPO and generation prompts as a JSON list), joins the process group (NCCL on CUDA, gloo on the CPU), trains, and on rank 0
prints one ``PROGRESS {json}`` line per optimizer step and writes the result as JSON. Pure module:
never imports Django or Celery.
"""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardmodel.lib.ranks import Team, exit_rank, join, leave

PROGRESS_PREFIX = "PROGRESS "


def launch_command(world_size: int, spec_path: str | Path, *, python: str = sys.executable) -> list[str]:
    """The torchrun command line that runs the job in ``spec_path`` on ``world_size`` local processes."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={world_size}",
            "--max-restarts=0", "-m", "training.lib.distributed", str(spec_path)]


class JobFailed(RuntimeError):
    """A distributed job ended badly; the message says which rank and how."""


def run_job(
    spec: Mapping[str, Any],
    world_size: int,
    workdir: str | Path,
    *,
    on_progress: Callable[[int, int, dict[str, float]], None],
    on_log: Callable[[str], None],
    check: Callable[[], None] | None = None,
    poll_s: float = 1.0,
    stop_grace_s: float = 10.0,
) -> dict[str, Any]:
    """Run the training job `spec` on `world_size` processes under torchrun and return rank 0's result.

    `on_progress(step, total, metrics)` sees each optimizer step, `on_log(line)` every other line the
    ranks and torchrun print, `check()` runs whenever no line came for `poll_s` seconds. An exception
    from any of them (a cancel) stops every process of the job (SIGTERM, then SIGKILL after
    `stop_grace_s`) and propagates. A job that exits non-zero raises `JobFailed` naming the rank
    that failed first and how (a signal, or its exit code and last error line).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "result": str(workdir / "result.json")}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    Path(spec["result"]).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Torch's default of one OpenMP thread per rank under torchrun would leave most CPU cores idle.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
    process = subprocess.Popen(launch_command(world_size, spec_path), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", env=env,
                               start_new_session=True)  # its own process group: stopped as one
    (workdir / "torchrun.pid").write_text(str(process.pid))
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, name="torchrun-output", daemon=True).start()
    tail: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=poll_s)
            except queue.Empty:
                if check is not None:
                    check()
                continue
            if line is None:
                break
            if line.startswith(PROGRESS_PREFIX):
                event = json.loads(line[len(PROGRESS_PREFIX):])
                on_progress(event["step"], event["total"], event["metrics"])
            else:
                tail = (tail + [line])[-400:]
                on_log(line)
        code = process.wait()
    finally:
        _stop(process, stop_grace_s)
    result = Path(spec["result"])
    if code != 0 and not result.exists():
        raise JobFailed(describe_failure(code, tail, world_size))
    if code != 0:
        # Rank 0 writes the result only after its last collective with the other ranks, so the
        # job's work is whole; what failed was a rank's teardown (gloo can abort a process whose
        # peer closed its sockets first). Say so, and keep the result.
        on_log(f"{describe_failure(code, tail, world_size).split(';')[0]} while shutting down, after "
               "every rank had finished and the result was written; the result stands")
    return json.loads(result.read_text())


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    """Stop torchrun and every rank it started (one process group), politely first."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers: ranks outlive torchrun only by accident
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def describe_failure(code: int, output: Sequence[str], world_size: int) -> str:
    """One clear sentence from torchrun's failure report: which rank failed first and how."""
    text = "\n".join(output)
    root = text.split("Root Cause", 1)[-1]
    rank = re.search(r"rank\s*:\s*(\d+)", root)
    exit_code = re.search(r"exitcode\s*:\s*(-?\d+)", root)
    who = f"rank {rank.group(1)} of {world_size}" if rank else f"a rank of {world_size}"
    if exit_code and int(exit_code.group(1)) < 0:
        number = -int(exit_code.group(1))
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        how = f"was killed by {name}"
    else:
        errors = [line for line in output if re.match(r"(\[rank\d+\]:\s*)?[A-Za-z_.]*(Error|Exception|Failed)\b", line)
                  and "ChildFailedError" not in line]
        how = f"exited with code {exit_code.group(1) if exit_code else code}"
        if errors:
            how += f": {errors[-1]}"
    return f"{who} {how}; torchrun stopped the other ranks and nothing was published"


def _progress_printer(team: Team):
    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        if team.main:
            print(PROGRESS_PREFIX + json.dumps({"step": step, "total": total, "metrics": metrics}), flush=True)
    return progress


def agreed_mode(config: Any, kind: str, team: Team) -> Any:
    """`config` with one mode for every rank: "auto" resolves on each rank's own GPU, and the ranks
    take the leanest choice any of them made (full < LoRA < QLoRA), so all train the same way."""
    if team.solo or config.mode != "auto":
        return config
    import torch

    from training.lib.modes import resolve_run_mode

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if config.device == "auto" else config.device)
    order = ("full", "lora", "qlora")
    mine = resolve_run_mode(config, kind=kind, device=device, ranks=team.size).mode
    return dataclasses.replace(config, mode=order[team.most(order.index(mine), device)])


def _run(spec: Mapping[str, Any], team: Team) -> dict[str, Any] | None:
    """Train as the spec says; rank 0 returns what the caller records, the others None."""
    from rewardmodel.lib.data import read_pairs

    kind, config, progress = spec["kind"], dict(spec["config"]), _progress_printer(team)
    if kind == "ppo":  # data: a JSON list of prompts (chat message lists)
        from training.lib.ppo import PPOConfig, train_ppo

        ppo_config = agreed_mode(PPOConfig.from_dict(config), kind, team)
        prompts = json.loads(Path(spec["data"]).read_text())
        outcome = train_ppo(ppo_config, prompts, spec["out"], progress, lineage=spec.get("lineage"))
        return {"out": outcome.out_dir, "metrics": outcome.metrics} if team.main else None
    if kind == "generation":  # one process; data: a JSON list of prompts; out: a JSONL, one completion a prompt
        return _generate(spec, config, progress) if team.main else None
    if kind == "guard":  # one process; data: the guard's plan; config: the model folders it names, and the device
        from training.lib.generation import resolve_device, resolve_dtype
        from training.lib.guard import measure

        device = resolve_device(config.pop("device", "auto"))
        plan = json.loads(Path(spec["data"]).read_text())
        return measure(plan, config, device=device, dtype=resolve_dtype("auto", device)) if team.main else None
    pairs = read_pairs(spec["data"])
    if kind == "reward_model":
        from rewardmodel.lib.config import RewardConfig
        from rewardmodel.lib.train import train_reward_model

        reward_config = agreed_mode(RewardConfig.from_dict(config), kind, team)
        result = train_reward_model(reward_config, pairs, spec["out"], progress,
                                    snapshot_sha256=spec.get("snapshot_sha256"))
        return _reward_model_result(spec, result, reward_config.device) if team.main else None
    if kind == "dpo":
        from training.lib.dpo import DPOConfig, train_dpo

        dpo_config = agreed_mode(DPOConfig.from_dict(config), kind, team)
        result = train_dpo(dpo_config, pairs, spec["out"], progress, lineage=spec.get("lineage"))
        return {"out": result.checkpoint_path, "metrics": result.metrics} if team.main else None
    raise ValueError(f"no distributed job for kind {kind!r} (reward_model, dpo, ppo, generation or guard)")


def _reward_model_result(spec: Mapping[str, Any], result: Any, device: str) -> dict[str, Any]:
    """Rank 0's account of a reward model it saved: metrics and meta.json, and where the spec carries the
    app's canary pairs (``canary``), the saved folder loaded back (proof that it loads) and scored on them,
    here where the GPU is, so the worker that publishes it never loads the model itself."""
    metrics = dict(result.metrics)
    if "canary" in spec:
        from training.lib.generation import resolve_device
        from training.lib.guard import canary_figures

        metrics.update(canary_figures(result.out_dir, spec["canary"], device=resolve_device(device)))
    meta = json.loads((Path(result.out_dir) / "meta.json").read_text())
    return {"out": result.out_dir, "metrics": metrics, "meta": meta}


def _generate(spec: Mapping[str, Any], config: dict[str, Any], progress) -> dict[str, Any]:
    """Sample a local checkpoint on the spec's prompts into its JSONL (written whole, then renamed), in order."""
    from training.lib.generation import GenerationConfig, generate_local

    prompts = json.loads(Path(spec["data"]).read_text())
    outputs = generate_local(GenerationConfig(**config), prompts, lambda done, total: progress(done, total, {}))
    out = Path(spec["out"])
    temp = out.with_name(f".{out.name}.tmp")
    temp.write_text("".join(json.dumps(dataclasses.asdict(o), ensure_ascii=False) + "\n" for o in outputs))
    os.replace(temp, out)
    return {"out": str(out), "completions": len(outputs)}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: torchrun ... -m training.lib.distributed SPEC.json")
    spec = json.loads(Path(args[0]).read_text())
    team = join(str(spec["config"].get("device", "auto")))
    try:
        outcome = _run(spec, team)
        if outcome is not None:  # after rank 0's last collective: a result on disk means the job finished
            Path(spec["result"]).write_text(json.dumps(outcome, default=float))
        team.barrier()  # every rank is done talking before any tears its connections down
    finally:
        leave()
    return 0


if __name__ == "__main__":
    exit_rank(main())
