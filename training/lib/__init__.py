"""Pure policy library: generation, DPO and PPO. Never imports Django or Celery."""
