"""Command line for generation without the web app.

    python -m training.lib.generation --prompts prompts.jsonl --model smollm2 --out completions.jsonl
    python -m training.lib.generation --prompts prompts.jsonl --endpoint http://127.0.0.1:8001/v1 \\
        --model Qwen/Qwen2.5-7B-Instruct --api-key-env OPENAI_API_KEY --concurrency 8 --out completions.jsonl

Prompts: JSONL, one object per line with ``"prompt"`` (a string, or a list of chat
messages) or ``"messages"``, as the prompt import takes them. Output: JSONL rows
``{"prompt": [messages], "checkpoint": NAME, "text", "sampling", "seed", "tokens"}``,
in input order, which ``manage.py import_completions`` reads back as they are (an
empty completion is left out and counted, as the web app's generation runs do). The
file is written to a temporary name and renamed when complete, so a failed run
leaves no half file. A tqdm bar counts prompts; a summary is printed as JSON, naming
the device and dtype a local model ran on ("auto" resolved: CUDA in bf16 where there is
a GPU, else the CPU in fp32) and the seconds the sampling took, so two runs that differ
only in ``--kv-cache`` can be compared on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.lib.endpoint import EndpointConfig, EndpointError, generate_endpoint
from training.lib.generation import GenerationConfig, generate_local, read_prompts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.lib.generation",
                                     description="Sample one completion per prompt, locally or from an endpoint.")
    parser.add_argument("--prompts", required=True, help="JSONL of prompts")
    parser.add_argument("--out", required=True, help="JSONL to write (replaced only when complete)")
    parser.add_argument("--model", default="smollm2", help="alias, local folder or hub id; with --endpoint, "
                                                           "the model name the endpoint serves")
    parser.add_argument("--checkpoint-name", help="the checkpoint column of the output (default: --model)")
    parser.add_argument("--endpoint", help="base URL of an OpenAI-compatible API (e.g. a vLLM server's /v1)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (endpoint only)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (endpoint only)")
    parser.add_argument("--retries", type=int, default=3, help="extra attempts on 429/5xx/timeouts (endpoint only)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts sampled together (local only)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when visible, else the CPU) | cpu | cuda | cuda:N | mps (local only)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto: bfloat16 on a GPU that has it, float16 on older GPUs, float32 on the CPU "
                             "(local only)")
    parser.add_argument("--kv-cache", default="dynamic", choices=("dynamic", "static"),
                        help="static: a preallocated cache that transformers compiles the decoding step for on "
                             "CUDA (local only)")
    return parser


def _write_atomically(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        prompts = read_prompts(args.prompts)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    bar = tqdm(total=len(prompts), unit="prompt", desc="generate", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    started = time.perf_counter()
    try:
        if args.endpoint:
            endpoint = EndpointConfig(base_url=args.endpoint, model=args.model, api_key_env=args.api_key_env,
                                      temperature=args.temperature, top_p=args.top_p,
                                      max_new_tokens=args.max_new_tokens, seed=args.seed, timeout_s=args.timeout,
                                      retries=args.retries, concurrency=args.concurrency)
            outputs = generate_endpoint(endpoint, prompts, progress)
        else:
            config = GenerationConfig(model=args.model, temperature=args.temperature, top_p=args.top_p,
                                      max_new_tokens=args.max_new_tokens, seed=args.seed,
                                      batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                                      kv_cache=args.kv_cache)
            outputs = generate_local(config, prompts, progress)
    except (EndpointError, OSError, ValueError) as error:  # a bad model path or setting, an endpoint that gave up
        raise SystemExit(f"error: {error}") from None
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    name = args.checkpoint_name or args.model
    rows = [{"prompt": list(prompt), "checkpoint": name, "text": out.text, "sampling": out.params,
             "seed": out.seed, "tokens": out.tokens} for prompt, out in zip(prompts, outputs, strict=True)]
    kept = [row for row in rows if row["text"].strip()]  # as the web app's generation runs do
    _write_atomically(Path(args.out), kept)
    json.dump({"out": args.out, "completions": len(kept), "empty_left_out": len(rows) - len(kept),
               "tokens": sum(row["tokens"] for row in kept), "seconds": round(seconds, 2),
               # Where a local model ran, "auto" resolved (an endpoint's outputs name none).
               "device": outputs[0].device if outputs else None, "dtype": outputs[0].dtype if outputs else None},
              sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
