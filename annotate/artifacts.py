"""Artifacts by URL: snapshots, reward models and checkpoints under ``settings.ARTIFACTS_URL``.

Two kinds of store, one contract:

- ``file://`` (the default, the folder ``ARTIFACTS_DIR``): a job writes a folder next to its final
  place and renames it in; readers use the file where it is.
- ``s3://bucket/prefix`` on any S3-compatible store (through fsspec/s3fs; endpoint, region and keys
  from settings): a job writes into a local staging folder, then ``folder_publish`` uploads every
  file, writes ``manifest.json`` (each file's size and sha256) last, and lists and reads the prefix
  back to verify it. A folder without a manifest is incomplete and is never read. Readers pull a
  verified copy into ``ARTIFACTS_CACHE_DIR``, keyed by the URL and the manifest's (or the snapshot
  file's) sha256, and reuse it.

Callers insert the row that points at an artifact only after ``folder_publish`` / ``file_publish``
returned, so a row never names a partial artifact. No host reads another host's disk: the web app
downloads what it serves through ``file_fetch`` as the GPU workers do.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from django.conf import settings
from fsspec.callbacks import Callback

from annotate import artifact_cache

MANIFEST = "manifest.json"
CHUNK = 1 << 20
_FETCHED: dict[str, str] = {}  # this process's verified copies of s3 folders: local path -> URL


class ArtifactError(Exception):
    """An artifact is missing, incomplete or does not match what its row or manifest says."""


def base_url() -> str:
    """Where artifacts live: ``ARTIFACTS_URL``, else the folder ``ARTIFACTS_DIR`` as a file:// URL."""
    return settings.ARTIFACTS_URL or Path(settings.ARTIFACTS_DIR).absolute().as_uri()


def artifact_url(*parts: str) -> str:
    """The URL of ``parts`` (plain names: a kind, a project slug, a run's name) under the base URL."""
    base = base_url()
    if is_local(base):
        return local_path(base).joinpath(*parts).as_uri()
    return "/".join([base, *parts])


def is_local(url: str) -> bool:
    return urlparse(url).scheme == "file"


def is_stored(url: str) -> bool:
    """Whether ``url`` names an artifact store (file:// or s3://), rather than a plain path or a hub id."""
    return urlparse(url).scheme in ("file", "s3")


def local_path(url: str) -> Path:
    """The local path of a file:// URL."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise ValueError(f"{url!r} is not a file:// URL")
    return Path(unquote(parsed.path))


def _s3_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{url!r} is not an s3://bucket/key URL")
    return f"{parsed.netloc}{parsed.path}".rstrip("/")


def s3_filesystem():
    """The store's fsspec filesystem. Listings are never cached: a verify must see the store as it is."""
    import s3fs  # not torch: the web app may import it

    client: dict[str, Any] = {"region_name": settings.S3_REGION} if settings.S3_REGION else {}
    return s3fs.S3FileSystem(
        endpoint_url=settings.S3_ENDPOINT_URL or None, key=settings.AWS_ACCESS_KEY_ID or None,
        secret=settings.AWS_SECRET_ACCESS_KEY or None, client_kwargs=client, use_listings_cache=False,
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(url: str, version: str) -> str:
    return hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()[:40]


def _name(url: str) -> str:
    return urlparse(url).path.rstrip("/").rsplit("/", 1)[-1] or "artifact"


# -- outputs -------------------------------------------------------------------------------------

def staging_path(url: str) -> Path:
    """Where a job writes the file or folder bound for ``url`` (nothing is there yet; its folder exists).

    file://: a hidden sibling of the final place, so publishing is a rename. s3://: a place under
    ``ARTIFACTS_CACHE_DIR/outgoing`` that becomes the cached copy once the upload is verified.
    """
    if is_local(url):
        final = local_path(url)
        staging = final.parent / f".tmp-{final.name}"
    else:
        staging = Path(settings.ARTIFACTS_CACHE_DIR) / "outgoing" / _key(url, "staging") / _name(url)
    if staging.is_dir():
        shutil.rmtree(staging)
    staging.unlink(missing_ok=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def folder_publish(local: str | Path, url: str, *, progress: Callable[[int, int], None] | None = None) -> str:
    """Move the finished, verified folder ``local`` to ``url`` and return ``url``; then a row may point at it.

    s3://: every file is uploaded, ``manifest.json`` last, and the prefix is listed and the manifest read
    back before this returns; an upload that fails part way raises and leaves no manifest (so nothing
    reads it), and a later publish to the same URL starts clean. ``progress(sent_bytes, total_bytes)``
    is called as the upload goes (every few MiB); an exception it raises (a cancel) stops the upload
    and removes what was sent.
    """
    local = Path(local)
    if is_local(url):
        final = local_path(url)
        if local.resolve() != final.resolve():
            shutil.rmtree(final, ignore_errors=True)  # left by a run that died between rename and row
            os.rename(local, final)
        return url
    files = _manifest_of(local)
    manifest = json.dumps({"files": files}, indent=1, sort_keys=True).encode()
    fs, root = s3_filesystem(), _s3_path(url)
    if fs.exists(root):  # an earlier attempt's files: drop the manifest first, so the folder reads as incomplete
        fs.rm(root, recursive=True)
    total, sent = sum(entry["size"] for entry in files.values()), 0
    try:
        for rel in files:
            _put_file(fs, local / rel, f"{root}/{rel}", progress, sent, total)
            sent += files[rel]["size"]
            if progress is not None:
                progress(sent, total)
        fs.pipe_file(f"{root}/{MANIFEST}", manifest)
        _verify_listing(fs, root, files, manifest)
    except BaseException:
        _remove_quietly(fs, root)
        raise
    _keep_as_cached(local, url, manifest)
    return url


class _Sent(Callback):
    """fsspec's upload callback: counts the bytes sent, and stops the upload once told to."""

    stop = False

    def call(self, *args, **kwargs) -> None:
        if self.stop:
            raise ArtifactError("upload stopped")


def _put_file(fs, src: Path, dst: str, progress: Callable[[int, int], None] | None, before: int, total: int) -> None:
    """Upload one file. With ``progress``, it is called from this thread every half second while the
    upload runs in another (s3fs calls its callback from its event loop, where a job's database
    writes may not run); if it raises, the upload is stopped and its exception propagates."""
    if progress is None:
        fs.put_file(str(src), dst)
        return
    sent = _Sent()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="upload") as pool:
        upload = pool.submit(fs.put_file, str(src), dst, callback=sent)
        while True:
            try:
                upload.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                pass
            try:
                progress(before + sent.value, total)
            except BaseException:
                sent.stop = True
                concurrent.futures.wait([upload])
                raise


def _manifest_of(folder: Path) -> dict[str, dict]:
    if not folder.is_dir():
        raise ArtifactError(f"nothing to publish: {folder} is not a folder")
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.rglob("*")) if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST
    }


def _verify_listing(fs, root: str, files: dict[str, dict], manifest: bytes) -> None:
    """Every file of the manifest is in the store with its size, and the manifest reads back as written."""
    listed = {info["name"].removeprefix(root + "/"): info["size"] for info in fs.find(root, detail=True).values()}
    wrong = [rel for rel, entry in files.items() if listed.get(rel) != entry["size"]]
    if wrong or fs.cat_file(f"{root}/{MANIFEST}") != manifest:
        raise ArtifactError(f"upload to s3://{root} did not verify: {', '.join(wrong) or MANIFEST} differ")


def _remove_quietly(fs, root: str) -> None:
    with contextlib.suppress(Exception):  # the original error is the one to report; a later publish cleans up
        fs.rm(root, recursive=True)
    with contextlib.suppress(Exception):  # a large file cut off mid-upload: its parts, which no listing shows
        bucket, _, prefix = root.partition("/")
        for upload in fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/").get("Uploads", []):
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _keep_as_cached(local: Path, url: str, manifest: bytes) -> None:
    """The uploaded folder is a verified copy already: this host reuses it instead of downloading it."""
    (local / MANIFEST).write_bytes(manifest)
    cached = Path(settings.ARTIFACTS_CACHE_DIR) / "folders" / _key(url, hashlib.sha256(manifest).hexdigest())
    _move_into_cache(local.parent, cached)
    _arrived(cached)


def file_publish(local: Path, url: str) -> None:
    """Move the finished file ``local`` to ``url`` (read-only there); then a row may point at it."""
    if is_local(url):
        final = local_path(url)
        os.replace(local, final)
        final.chmod(0o444)
        _fsync_dir(final.parent)
        return
    digest = file_upload(local, url)
    cached = Path(settings.ARTIFACTS_CACHE_DIR) / "files" / _key(url, digest)
    cached.mkdir(parents=True, exist_ok=True)
    os.replace(local, cached / _name(url))  # a verified copy already: this host need not download it
    (cached / _name(url)).chmod(0o444)
    _arrived(cached)
    with contextlib.suppress(OSError):
        local.parent.rmdir()  # the emptied staging folder


def artifact_delete(url: str) -> None:
    """Remove a file or folder that no row points at (a publish whose row could not be inserted)."""
    if is_local(url):
        path = local_path(url)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    else:
        _remove_quietly(s3_filesystem(), _s3_path(url))


# -- inputs --------------------------------------------------------------------------------------

def file_fetch(url: str, *, sha256: str, pin: bool = False) -> Path:
    """A local copy of the file at ``url``: the file itself for file://, else a cached download.

    A download is checked against ``sha256`` before it is kept; a mismatch raises ArtifactError and
    keeps nothing. A missing file raises ArtifactError. ``pin``: keep the copy from being pruned
    until this process's run ends (a file read at once needs no pin: it was just used, so it is
    the last to go, and an open file outlives its removal).
    """
    if is_local(url):
        path = local_path(url)
        if not path.is_file():
            raise ArtifactError(f"the file {path} is missing")
        return path
    cached = Path(settings.ARTIFACTS_CACHE_DIR) / "files" / _key(url, sha256)
    if pin:
        artifact_cache.pin(cached)
    if (cached / _name(url)).is_file():
        artifact_cache.touch(cached)
        return cached / _name(url)
    tmp = _tmp_beside(cached)
    try:
        _download(s3_filesystem(), _s3_path(url), tmp / _name(url), url)
        got = sha256_file(tmp / _name(url))
        if got != sha256:
            raise ArtifactError(f"{url} is corrupt: its sha256 is {got}, not {sha256} as recorded; refusing it")
        (tmp / _name(url)).chmod(0o444)
        _arrived(_move_into_cache(tmp, cached))
        return cached / _name(url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def folder_fetch(url: str) -> Path:
    """A local copy of the published folder at ``url``: the folder itself for file://, else a cached download.

    An s3 folder is read only through its manifest: no manifest (an unfinished or interrupted upload)
    or a file whose size or sha256 differs from it raises ArtifactError and keeps nothing. The copy
    is pinned until this process's run ends (`artifact_cache.release_pins`): a run may read its
    model folder again when it publishes.
    """
    if is_local(url):
        path = local_path(url)
        if not path.is_dir():
            raise ArtifactError(f"the folder {path} is missing")
        return path
    fs, root = s3_filesystem(), _s3_path(url)
    try:
        manifest = fs.cat_file(f"{root}/{MANIFEST}")
    except FileNotFoundError:
        raise ArtifactError(f"{url} has no {MANIFEST}: it was never completely published") from None
    cached = Path(settings.ARTIFACTS_CACHE_DIR) / "folders" / _key(url, hashlib.sha256(manifest).hexdigest())
    artifact_cache.pin(cached)
    if (cached / _name(url) / MANIFEST).is_file():
        artifact_cache.touch(cached)
    else:
        tmp = _tmp_beside(cached)
        try:
            folder = tmp / _name(url)
            for rel, entry in json.loads(manifest)["files"].items():
                _download(fs, f"{root}/{rel}", folder / rel, url)
                if (folder / rel).stat().st_size != entry["size"] or sha256_file(folder / rel) != entry["sha256"]:
                    raise ArtifactError(f"{url}: {rel} does not match its manifest; refusing the folder")
            (folder / MANIFEST).write_bytes(manifest)
            _arrived(_move_into_cache(tmp, cached))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _FETCHED[str(cached / _name(url))] = url
    return cached / _name(url)


def blob_write(url: str, data: bytes) -> None:
    """Write a small object (a job's spec or result) at the s3:// ``url`` in one request."""
    s3_filesystem().pipe_file(_s3_path(url), data)


def blob_read(url: str) -> bytes:
    """The small object at the s3:// ``url``; FileNotFoundError when there is none."""
    return s3_filesystem().cat_file(_s3_path(url))


def has_manifest(url: str) -> bool:
    """Whether the s3:// ``url`` is a completely published folder (its manifest is there)."""
    return s3_filesystem().exists(f"{_s3_path(url)}/{MANIFEST}")


def fetched_from(path: str) -> str | None:
    """The s3:// URL whose verified copy ``path`` is (a folder ``folder_fetch`` returned on this host), else None."""
    return _FETCHED.get(str(path))


def file_upload(local: Path, url: str) -> str:
    """Upload a copy of ``local`` to the s3:// ``url`` (the local file stays) and check its size; return its sha256."""
    fs, key = s3_filesystem(), _s3_path(url)
    size, digest = local.stat().st_size, sha256_file(local)
    try:
        fs.put_file(str(local), key)
        if fs.info(key)["size"] != size:
            raise ArtifactError(f"upload to {url} did not verify: the stored size differs")
    except BaseException:
        _remove_quietly(fs, key)
        raise
    return digest


def model_reference(uri: str) -> str:
    """How a job names a model folder: an ``s3://`` URL as it is (the job's host pulls it, verified,
    when it runs; nothing is downloaded here), anything else as `model_source` gives it."""
    return uri if is_stored(uri) and not is_local(uri) else model_source(uri)


def model_source(uri: str) -> str:
    """What a library loads for a checkpoint's or reward model's ``uri``: a local folder for a stored
    artifact (pulled into the cache from s3), else ``uri`` as it is (a local path, an alias, a hub id)."""
    return str(folder_fetch(uri)) if is_stored(uri) else uri


def _download(fs, key: str, dest: Path, url: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get_file(key, str(dest))
    except FileNotFoundError:
        raise ArtifactError(f"{url} is missing from the store ({key})") from None


def _tmp_beside(cached: Path) -> Path:
    tmp = cached.parent / f".{cached.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _move_into_cache(tmp: Path, cached: Path) -> Path:
    """Rename a complete ``tmp`` folder to ``cached``; when another process got there first, keep theirs.

    An entry whose content is gone (moved out by its reader; only its use stamp left) is stale: replaced.
    """
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, cached)
    except OSError:
        if not cached.is_dir():
            raise
        if {p.name for p in cached.iterdir()} <= {artifact_cache.STAMP}:
            shutil.rmtree(cached, ignore_errors=True)
            os.rename(tmp, cached)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return cached


def _arrived(cached: Path) -> None:
    """A new entry is in the cache: mark it used, then keep the cache within its budget."""
    artifact_cache.touch(cached)
    artifact_cache.prune(keep=cached)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
