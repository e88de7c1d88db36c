"""Pure reward-model library: backbones and Bradley–Terry training. Never imports Django or Celery."""
