"""Sample the demo completions: every prompt in data/demo/prompts.jsonl under two sampling settings.

Usage (from the repository root, CPU is fine; about a quarter of an hour on two cores)::

    .venv/bin/python scripts/make_demo_completions.py [--limit N] [--out PATH]

Input: one JSON object per line, ``{"messages": [{"role", "content"}, ...], "tags": [...]}``.
Output: one line per completion, prompts in file order, first every prompt
under ``smollm2-t0.3`` then every prompt under ``smollm2-t1.0``::

    {"prompt": [messages], "checkpoint": "smollm2-t0.3", "text": "...",
     "sampling": {"model": ..., "temperature": ..., "top_p": ..., "max_new_tokens": ..., "batch_size": ...},
     "seed": N, "tokens": N}

The output file is replaced atomically, so a crash leaves the old one intact.
Same machine, same library versions, same prompts: same file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script, not as part of an installed package

from training.lib.generation import GenerationConfig, generate_local  # noqa: E402


@dataclass(frozen=True)
class Setting:
    checkpoint: str
    temperature: float
    top_p: float
    seed: int


# Two temperatures of the same model give pairs that differ visibly in quality,
# which is what the demo's annotators and reward model need.
SETTINGS = (
    Setting("smollm2-t0.3", temperature=0.3, top_p=0.9, seed=1_000),
    Setting("smollm2-t1.0", temperature=1.0, top_p=0.95, seed=2_000),
)


def read_prompts(path: Path) -> list[list[dict[str, str]]]:
    """The ``messages`` of every non-blank line; fails loudly on a malformed one."""
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        if not messages or messages[-1]["role"] != "user":
            raise ValueError(f"{path}:{number}: a prompt must end with a user turn")
        prompts.append(messages)
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, default=ROOT / "data/demo/prompts.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "data/demo/completions.jsonl")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (for a quick look)")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    prompts = read_prompts(args.prompts)[: args.limit]
    started = time.monotonic()
    lines: list[str] = []
    tokens = 0
    with tqdm(total=len(prompts) * len(SETTINGS), unit="completion", dynamic_ncols=True) as bar:
        for setting in SETTINGS:
            bar.set_description(setting.checkpoint)
            config = GenerationConfig(
                model=args.model,
                temperature=setting.temperature,
                top_p=setting.top_p,
                max_new_tokens=args.max_new_tokens,
                seed=setting.seed,
                batch_size=args.batch_size,
            )
            offset = bar.n

            def progress(done: int, total: int, offset: int = offset) -> None:
                bar.update(offset + done - bar.n)

            for messages, generated in zip(prompts, generate_local(config, prompts, progress), strict=True):
                tokens += generated.tokens
                record = {
                    "prompt": messages,
                    "checkpoint": setting.checkpoint,
                    "text": generated.text,
                    "sampling": generated.params,
                    "seed": generated.seed,
                    "tokens": generated.tokens,
                }
                lines.append(json.dumps(record, ensure_ascii=False))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = args.out.with_name(f".{args.out.name}.tmp")
    staging.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(staging, args.out)
    elapsed = time.monotonic() - started
    print(
        f"wrote {len(lines)} completions to {args.out} in {elapsed:.0f}s "
        f"({tokens} new tokens, {tokens / elapsed:.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
