"""This host's cache of verified copies from the store: pinned while in use, pruned least recently used.

Every entry is a folder ``ARTIFACTS_CACHE_DIR/{files,folders}/<key>`` (`annotate.artifacts`). Each
fetch or publish stamps it (``.used``'s mtime), so the order of last use survives restarts. After
a new entry arrives, `prune` removes the least recently used entries until the cache holds at most
``ARTIFACTS_CACHE_MAX_GB``, skipping every entry some process has pinned.

A pin is a shared ``flock`` on ``<key>.lock`` beside the entry, taken before the entry is looked up
and held until the process calls `release_pins` (a run's end: `training.runs.run_execute`) or
exits, so a run that reads its base model again at the end (publishing a sharded or QLoRA policy
reloads it) never finds it pruned under it. `prune` takes the exclusive lock without waiting and
leaves an entry whose lock it cannot get; it moves the entry aside under the lock, then deletes
it. Lock files are tiny and never deleted: a process holding an old lock file's inode must keep
sharing it with the next pruner.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from pathlib import Path

from django.conf import settings

__all__ = ["cache_bytes", "pin", "prune", "release_pins", "touch"]

log = logging.getLogger(__name__)

GIB = 1024**3
STAMP = ".used"
KINDS = ("files", "folders")
_PINS: dict[str, int] = {}  # entry path -> the open lock file holding this process's shared lock


def _lock_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".lock")


def pin(entry: Path) -> None:
    """Hold a shared lock on ``entry`` (present or not yet) until `release_pins`; waits while a prune removes it."""
    key = str(entry)
    if key in _PINS:
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(_lock_path(entry), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    _PINS[key] = descriptor


def release_pins() -> None:
    """Let `prune` remove what this process fetched (its run is over)."""
    while _PINS:
        _, descriptor = _PINS.popitem()
        os.close(descriptor)  # closing the file releases its lock


def touch(entry: Path) -> None:
    """Mark ``entry`` used now."""
    stamp = entry / STAMP
    try:
        stamp.touch()
    except OSError:  # the entry is gone (moved out by its reader, or pruned): nothing to mark
        pass


def _size(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _entries() -> list[tuple[float, Path]]:
    """(last use, path) of every entry, oldest first."""
    found = []
    for kind in KINDS:
        base = Path(settings.ARTIFACTS_CACHE_DIR) / kind
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            if entry.is_dir() and not entry.name.startswith("."):
                stamp = entry / STAMP
                try:
                    used = stamp.stat().st_mtime if stamp.exists() else entry.stat().st_mtime
                except OSError:
                    continue
                found.append((used, entry))
    return sorted(found)


def cache_bytes() -> int:
    """What the cache's entries hold on disk (staging folders left out)."""
    return sum(_size(entry) for _, entry in _entries())


def prune(*, budget_bytes: float | None = None, keep: Path | None = None) -> list[Path]:
    """Remove least recently used, unpinned entries until the cache holds at most ``budget_bytes``
    (default ``ARTIFACTS_CACHE_MAX_GB``; 0 never prunes), never ``keep`` (what just arrived, about
    to be read). Returns the entries removed."""
    if budget_bytes is None:
        budget_bytes = settings.ARTIFACTS_CACHE_MAX_GB * GIB
    if budget_bytes <= 0:
        return []
    _sweep_leftovers()
    entries = [(entry, _size(entry)) for _, entry in _entries()]
    total = sum(size for _, size in entries)
    removed: list[Path] = []
    for entry, size in entries:
        if total <= budget_bytes:
            break
        if entry == keep or str(entry) in _PINS or not _remove_unpinned(entry):
            continue
        total -= size
        removed.append(entry)
    if total > budget_bytes:
        log.warning("the artifact cache holds %.1f GiB, over ARTIFACTS_CACHE_MAX_GB (%.1f GiB): the rest is in use",
                    total / GIB, budget_bytes / GIB)
    return removed


def _sweep_leftovers() -> None:
    """Delete what a prune moved aside but a crash kept it from deleting."""
    for kind in KINDS:
        base = Path(settings.ARTIFACTS_CACHE_DIR) / kind
        for aside in base.glob(".pruned-*") if base.is_dir() else ():
            shutil.rmtree(aside, ignore_errors=True)


def _remove_unpinned(entry: Path) -> bool:
    descriptor = os.open(_lock_path(entry), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # pinned by a run on this host
        aside = entry.with_name(f".pruned-{entry.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(entry, aside)  # readers looking it up now miss it and fetch it again
        except OSError:
            return False
    finally:
        os.close(descriptor)
    shutil.rmtree(aside, ignore_errors=True)
    return True
