"""Run the demo: gunicorn on 127.0.0.1:8000 and one Celery worker, until Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Start the web server and a Celery worker (queues default and gpu); Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--workers", type=int, default=2)

    def handle(self, *args, bind: str, workers: int, **options):
        bin_dir = os.path.dirname(sys.executable)
        commands = {
            "web": [os.path.join(bin_dir, "gunicorn"), "config.wsgi", "--bind", bind, "--workers", str(workers),
                    "--access-logfile", "-"],
            "worker": [os.path.join(bin_dir, "celery"), "-A", "config", "worker", "-Q", "default,gpu",
                       "--concurrency", "1", "--loglevel", "INFO"],
        }
        children = {name: subprocess.Popen(argv) for name, argv in commands.items()}
        self.stdout.write(self.style.SUCCESS(f"Flywheel is running on http://{bind}/  (Ctrl-C to stop)"))
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, child in children.items():
                    if child.poll() is not None:
                        self.stderr.write(f"{name} exited with status {child.returncode}; stopping the demo.")
                        stopping = True
                time.sleep(0.5)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children.values():
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
            self.stdout.write("Stopped.")
