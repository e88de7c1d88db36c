#!/usr/bin/env bash
# The reward model's CUDA-graph checks and benchmark on a lent GPU machine, in one go.
#
# That machine has torch, transformers and accelerate but cannot reach PyPI, and its copy of
# the tree is limited to 64 MiB. Prepare, on this machine, in the repository root:
#   .gpu/whl/       wheels of trl 1.16.0, datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19 for
#                   CPython 3.12 (`pip download --no-deps --only-binary=:all: --python-version 3.12 ...`)
#   .gpu/smollm2/   SmolLM2-135M-Instruct's config and tokenizer files, without the weights
#                   (from the converted cache, ~/.cache/flywheel/models/smollm2-135m-instruct)
# and run this script there with `.gpu` carried. The weights are random (same seed for both
# sides): throughput is the real architecture's; accuracy compares two models learning from scratch.
# Reports land in $OUT (or bench/out).
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-bench/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"

# 1. Graphed steps train like eager ones (tiny random Llama and BERT, fp32 and bf16).
timeout 120 python3 -m pytest -q -p no:cacheprovider -p no:django --noconftest -o addopts= \
    tests/rewardmodel/test_lib_graphs.py 2>&1 | tail -15

# 2. SmolLM2-135M architecture against TRL, at a small batch (launch-bound) and a larger one.
bench() {
    timeout "$1" python3 bench/reward_vs_trl.py --device cuda --threads 8 --compile off --backbone .gpu/smollm2 \
        --random-init --max-length 512 --lr 3e-5 --epochs 1 --trl-gc-steps -1 --run-timeout 90 "${@:2}" 2>&1 \
        | grep -v '^\s*$' | grep -v Warning
}
bench 240 --model-name "SmolLM2-135M b16" --pairs 1200 --batch-size 16 \
    --runs ours-tf32-graphs,ours-bf16-graphs,trl-tf32,trl-bf16,ours-tf32-eager,ours-bf16-eager
bench 180 --model-name "SmolLM2-135M b48" --pairs 3000 --batch-size 48 \
    --runs ours-tf32-graphs,ours-bf16-graphs,trl-tf32,trl-bf16,ours-tf32-eager
mkdir -p "$out"
cp bench/out/reward_vs_trl-smollm2-135m-b*-cuda.* "$out"/ 2>/dev/null
ls "$out"
