"""Frozen dataset snapshots: the ``pairs`` export written once to a file, plus a row describing it.

A snapshot file is never rewritten: it is written under a temporary name, fsynced, renamed
into place, made read-only, and only then is the row inserted with its sha256, row count
and the number of votes it was built from. Reward models and policy runs point at the row.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from django.conf import settings
from django.utils import timezone

from annotate.exports import filters_clean, write_export
from annotate.models import Project, Snapshot
from annotate.services import InvalidInput

FORMAT = "pairs"


def snapshot_freeze(*, project: Project, filters: dict | None = None) -> Snapshot:
    """Freeze the project's current ``pairs`` export (optionally filtered, see
    ``exports.filters_clean``) to ``ARTIFACTS_DIR/snapshots/<slug>/<timestamp>-<rows>.jsonl``.

    The file's sha256 and row count are stored on the returned row; ``votes`` counts the
    votes read to build it. Reads take no lock: votes recorded meanwhile may or may not be
    included, and ``votes`` says exactly how many were.
    """
    filters = filters_clean(filters)
    folder = Path(settings.ARTIFACTS_DIR) / "snapshots" / project.slug
    folder.mkdir(parents=True, exist_ok=True)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%fZ")
    votes = 0

    def count_votes(n: int) -> None:
        nonlocal votes
        votes += n

    partial = folder / f".{stamp}.partial.jsonl"
    count = write_export(project=project, fmt=FORMAT, path=partial, progress=count_votes, filters=filters)
    path = folder / f"{stamp}-{count}.jsonl"
    moved = False
    try:
        os.replace(partial, path)  # microsecond stamps: two freezes never share a name
        moved = True
        path.chmod(0o444)
        _fsync_dir(folder)
        return Snapshot.objects.create(
            project=project,
            uri=path.as_uri(),
            format=FORMAT,
            count=count,
            votes=votes,
            sha256=file_sha256(path),
            filters=filters,
        )
    except BaseException:
        # No row, no file: a snapshot exists only when both do.
        (path if moved else partial).unlink(missing_ok=True)
        raise


def snapshot_path(snapshot: Snapshot) -> Path:
    """The local file of a snapshot. Raises InvalidInput for a URI that is not ``file://``."""
    parsed = urlparse(snapshot.uri)
    if parsed.scheme != "file":
        raise InvalidInput(f"snapshot {snapshot.pk} is stored at {snapshot.uri!r}, not in a local file")
    return Path(unquote(parsed.path))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
