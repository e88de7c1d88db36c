"""Downloads of a frozen snapshot in every export format.

``pairs`` is the frozen file itself, byte for byte (its sha256 is on the row). The pairwise
formats (``trl``, ``trl-conversational``, ``hh-rlhf``) are derived line by line from that file,
exactly as ``annotate.exports`` derives them from votes: tie pairs are left out, and ``margin``
(from the majority's strength) is on every row of the TRL formats when any pair has a strength.
``raw`` lists single votes, which a snapshot file does not keep, so it is read from the database
with the snapshot's filters and ``before`` its creation time.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from annotate.exports import FORMATS, export_stream, jsonl_chunks, pairwise_row
from annotate.models import Snapshot
from annotate.services import InvalidInput
from annotate.snapshots import snapshot_path

CHUNK_BYTES = 1 << 16
DERIVED = ("trl", "trl-conversational", "hh-rlhf")


def download_name(snapshot: Snapshot, fmt: str) -> str:
    return f"{snapshot.project.slug}-snapshot-{snapshot.pk}-{fmt}.jsonl"


def snapshot_stream(snapshot: Snapshot, fmt: str) -> Iterator[bytes]:
    """The snapshot as JSONL in ``fmt``. Raises InvalidInput for an unknown format or a missing or corrupt file."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "raw":
        filters = {**snapshot.filters, "before": snapshot.created_at.isoformat()}
        return export_stream(project=snapshot.project, fmt="raw", filters=filters)
    path = snapshot_path(snapshot)  # from the artifact store through this host's cache, sha256 checked
    if fmt == "pairs":
        return _file_chunks(path)
    return _derived(path, fmt)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            yield block


def _pairs(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _derived(path: Path, fmt: str) -> Iterator[bytes]:
    margin = fmt != "hh-rlhf" and any(p.get("strength") is not None for p in _pairs(path))
    return jsonl_chunks(
        pairwise_row(fmt, pair["prompt"], pair["chosen"], pair["rejected"], strength=pair.get("strength"),
                     margin=margin)
        for pair in _pairs(path) if not pair.get("tie")
    )
