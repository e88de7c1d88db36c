"""The Celery app: queues ``default`` and ``gpu``; the broker comes from settings."""
from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("flywheel")


@app.on_configure.connect
def _configure(sender: Celery, **_: object) -> None:
    from django.conf import settings

    conf: dict = {
        "broker_url": settings.CELERY_BROKER_URL,
        "task_always_eager": settings.CELERY_TASK_ALWAYS_EAGER,
        "task_eager_propagates": True,
        "task_ignore_result": True,
        "task_default_queue": "default",
        "task_queues": [Queue("default"), Queue("gpu")],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
    }
    if settings.CELERY_BROKER_URL.startswith("redis"):
        # Long training runs are acked late; Redis must not redeliver them while they still run.
        conf["broker_transport_options"] = {"visibility_timeout": 24 * 3600}
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        folder = settings.CELERY_BROKER_DIR
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.5,
        }
    sender.conf.update(conf)


app.autodiscover_tasks(["annotate", "rewardmodel", "training"])
