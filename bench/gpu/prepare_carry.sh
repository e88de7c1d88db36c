#!/usr/bin/env bash
# Build var/carry/ (ignored by git) for bench/gpu/run_proof.sh: what the GPU machine lacks, in ~6 MB.
#
#   var/carry/smollm2/  SmolLM2-135M-Instruct's config, generation config, tokenizer and chat template,
#                       without weights (the converted cache holds 540 MB of fp32 weights and the
#                       package's GGUF is 98 MB: neither fits the 64 MiB a run may copy). The proof
#                       then trains and samples seeded random weights of exactly this config.
#   var/carry/whl/      wheels of trl 1.16.0, datasets 5.2.0, dill 0.4.1 and multiprocess 0.70.19 for
#                       CPython 3.12 (the GPU image has torch, transformers, accelerate, peft, pyarrow,
#                       pandas and xxhash, but not these).
#
# Run from the repository root on this machine (PyPI reachable): bash bench/gpu/prepare_carry.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-.venv/bin/python}
src=$("$python" -m rewardmodel.lib.backbones smollm2)  # converts the GGUF once if the cache is empty
mkdir -p var/carry/smollm2 var/carry/whl
for f in config.json generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json \
         chat_template.jinja; do
    [ -f "$src/$f" ] && cp "$src/$f" var/carry/smollm2/
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d var/carry/whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
du -sh var/carry
