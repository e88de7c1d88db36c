"""gunicorn settings for ``bench/vote_http.py`` (and a sane start for production on a small host).

Threaded workers keep HTTP/1.1 connections alive, so an annotator's browser or API
client does not pay a TCP handshake per request, and each thread keeps its own
persistent PostgreSQL connection (``DB_CONN_MAX_AGE``). Every value can be
overridden on the command line, e.g. ``--workers 4 --threads 8``.
"""
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
# Django spends much of a request waiting on PostgreSQL, so a few more processes than
# cores keep the CPUs busy; threads cover the remaining waits without more memory.
workers = int(os.environ.get("GUNICORN_WORKERS", "3"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = 30
backlog = 512
accesslog = None
errorlog = "-"
loglevel = "warning"
# The worker heartbeat touches a file in this folder on every loop; on a disk that is a slow syscall.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Recycle nothing during a run: a restarted worker would show up as a latency spike.
max_requests = 0
timeout = 30
