"""The artifact layer against a real S3-compatible server (tests/store.py): publish, verify, pull, cache, refuse."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from annotate import artifacts
from annotate.artifacts import ArtifactError
from annotate.models import Snapshot
from annotate.services import InvalidInput
from annotate.snapshots import snapshot_freeze, snapshot_path
from annotate.votes import vote_record
from tests.conftest import make_comparisons
from tests.store import another_host, keys_in, lose_the_store_after, store_back

ROOT = Path(__file__).resolve().parents[2]


def a_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "config.json").write_text('{"layers": 2}')
    (path / "model.safetensors").write_bytes(os.urandom(300_000))
    (path / "sub" / "tokenizer.json").write_text("{}")
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_default_is_the_local_folder(settings, tmp_path):
    settings.ARTIFACTS_URL, settings.ARTIFACTS_DIR = "", tmp_path / "artifacts"
    url = artifacts.artifact_url("checkpoints", "demo", "dpo-run-3")
    assert url == (tmp_path / "artifacts" / "checkpoints" / "demo" / "dpo-run-3").as_uri()
    staging = artifacts.staging_path(url)
    a_folder(staging)
    assert artifacts.folder_publish(staging, url) == url
    assert artifacts.folder_fetch(url) == tmp_path / "artifacts" / "checkpoints" / "demo" / "dpo-run-3"
    assert not staging.exists() and not (tmp_path / "artifacts" / "checkpoints" / "demo" / "dpo-run-3" / "manifest.json").exists()
    assert artifacts.model_source("/some/local/folder") == "/some/local/folder"
    assert artifacts.model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_an_artifacts_url_that_is_neither_file_nor_s3_stops_the_start(tmp_path):
    code = "import django; django.setup()"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "FLYWHEEL_VAR_DIR": str(tmp_path),
           "ARTIFACTS_URL": "ftp://store/artifacts"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "ImproperlyConfigured: ARTIFACTS_URL='ftp://store/artifacts'" in result.stderr


def test_a_published_folder_is_every_file_then_its_manifest_and_another_host_pulls_it_once(
        settings, tmp_path, s3_artifacts, s3_client):
    url = artifacts.artifact_url("checkpoints", "demo", "dpo-run-1")
    assert url == f"s3://{s3_artifacts}/artifacts/checkpoints/demo/dpo-run-1"
    staging = artifacts.staging_path(url)
    expected = files_of(a_folder(staging))
    artifacts.folder_publish(staging, url)
    prefix = "artifacts/checkpoints/demo/dpo-run-1/"
    assert keys_in(s3_client, s3_artifacts, prefix) == sorted(prefix + k for k in [*expected, "manifest.json"])
    assert not staging.exists()

    another_host(settings, tmp_path, "web")
    pulled = artifacts.folder_fetch(url)
    assert pulled.is_relative_to(tmp_path / "web" / "cache") and pulled.name == "dpo-run-1"
    assert {k: v for k, v in files_of(pulled).items() if k != "manifest.json"} == expected
    # Reused, not downloaded again: the copy stays good even after the store loses a weight file.
    s3_client.delete_object(Bucket=s3_artifacts, Key=prefix + "model.safetensors")
    assert artifacts.folder_fetch(url) == pulled


def test_an_interrupted_upload_leaves_nothing_readable_and_a_retry_publishes(
        settings, tmp_path, s3_artifacts, s3_client, monkeypatch):
    url = artifacts.artifact_url("reward_models", "demo", "run-7")
    staging = artifacts.staging_path(url)
    expected = files_of(a_folder(staging))
    lose_the_store_after(monkeypatch, 2)
    with pytest.raises(ConnectionError, match="mid-upload"):
        artifacts.folder_publish(staging, url)
    assert not keys_in(s3_client, s3_artifacts, "artifacts/reward_models/demo/run-7/manifest.json")
    # What an interrupted upload leaves (here: files without a manifest) is never read as an artifact.
    s3_client.put_object(Bucket=s3_artifacts, Key="artifacts/reward_models/demo/run-7/config.json", Body=b"{}")
    with pytest.raises(ArtifactError, match="never completely published"):
        artifacts.folder_fetch(url)

    store_back(monkeypatch)
    artifacts.folder_publish(staging, url)
    another_host(settings, tmp_path, "gpu-2")
    assert {k: v for k, v in files_of(artifacts.folder_fetch(url)).items() if k != "manifest.json"} == expected


def test_a_folder_whose_file_changed_in_the_store_is_refused(settings, tmp_path, s3_artifacts, s3_client):
    url = artifacts.artifact_url("checkpoints", "demo", "ppo-run-2")
    staging = artifacts.staging_path(url)
    a_folder(staging)
    artifacts.folder_publish(staging, url)
    s3_client.put_object(Bucket=s3_artifacts, Key="artifacts/checkpoints/demo/ppo-run-2/config.json",
                         Body=b'{"layers": 3}')
    host = another_host(settings, tmp_path, "gpu-2")
    with pytest.raises(ArtifactError, match="config.json does not match its manifest"):
        artifacts.folder_fetch(url)
    # Nothing half-checked is kept (the empty lock file a reader pins a copy through holds no content).
    assert not any(p.is_file() and p.suffix != ".lock" for p in (host / "cache").rglob("*"))


@pytest.fixture
def voted(project, annotator):
    for c in make_comparisons(project, 5, texts=("a good answer", "a bad answer")):
        vote_record(annotator=annotator, comparison_id=c.pk, choice="a", strength=2)


def test_a_snapshot_is_frozen_into_the_store_and_checked_when_another_host_reads_it(
        settings, tmp_path, project, voted, s3_artifacts, s3_client):
    snapshot = snapshot_freeze(project=project)
    assert snapshot.uri.startswith(f"s3://{s3_artifacts}/artifacts/snapshots/demo/") and snapshot.count == 5
    key = snapshot.uri.removeprefix(f"s3://{s3_artifacts}/")
    assert keys_in(s3_client, s3_artifacts, "artifacts/snapshots/") == [key]
    assert not (tmp_path / "gpu-host" / "scratch").exists()  # nothing written beside the store but the cache

    another_host(settings, tmp_path, "gpu-2")
    local = snapshot_path(snapshot)
    assert artifacts.sha256_file(local) == snapshot.sha256 and local.is_relative_to(tmp_path / "gpu-2")

    s3_client.put_object(Bucket=s3_artifacts, Key=key, Body=s3_client.get_object(Bucket=s3_artifacts, Key=key)["Body"]
                         .read().replace(b'"a good answer', b'"a fine answer'))
    host = another_host(settings, tmp_path, "gpu-3")
    with pytest.raises(InvalidInput, match=f"is corrupt: its sha256 is [0-9a-f]{{64}}, not {snapshot.sha256}"):
        snapshot_path(snapshot)
    assert not any(p.is_file() for p in (host / "cache").rglob("*"))


def test_the_web_app_serves_a_snapshot_from_the_store_and_refuses_a_corrupt_one(
        settings, tmp_path, client, project, manager, voted, s3_artifacts, s3_client):
    client.force_login(manager)
    client.post(reverse("console-freeze", args=[project.slug]), {"note": "for the store"})
    snapshot = Snapshot.objects.get(project=project)
    assert snapshot.uri.startswith(f"s3://{s3_artifacts}/")

    another_host(settings, tmp_path, "web")
    url = reverse("console-snapshot-download", args=[project.slug, snapshot.pk])
    response = client.get(url, {"format": "pairs"})
    assert response.status_code == 200
    content = b"".join(response.streaming_content)
    assert hashlib.sha256(content).hexdigest() == snapshot.sha256
    assert client.get(url, {"format": "trl"}).status_code == 200

    key = snapshot.uri.removeprefix(f"s3://{s3_artifacts}/")
    s3_client.put_object(Bucket=s3_artifacts, Key=key, Body=content[:-10])
    another_host(settings, tmp_path, "web-2")
    refused = client.get(url, {"format": "pairs"})
    assert refused.status_code == 410 and "is corrupt" in refused.content.decode()


def test_a_snapshot_upload_cut_off_mid_way_leaves_no_row_nothing_readable_and_a_retry_freezes_once(
        settings, tmp_path, project, voted, s3_artifacts, s3_client, monkeypatch):
    import s3fs

    real = s3fs.S3FileSystem._put_file

    async def cut_off(self, lpath, rpath, *args, **kwargs):
        if "/snapshots/" in rpath:  # the store keeps the half that arrived, then the connection drops
            half = tmp_path / "half-sent"
            data = Path(lpath).read_bytes()
            half.write_bytes(data[: len(data) // 2])
            await real(self, str(half), rpath, *args, **kwargs)
            raise ConnectionError("connection to the store lost mid-upload")
        return await real(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", cut_off)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(ConnectionError, match="mid-upload"):
        snapshot_freeze(project=project)
    assert not Snapshot.objects.exists()
    assert keys_in(s3_client, s3_artifacts, "artifacts/snapshots/") == []  # the half that arrived is removed
    assert not any(p.is_file() for p in (tmp_path / "gpu-host").rglob("*"))  # nor a staged or cached copy

    store_back(monkeypatch)
    snapshot = snapshot_freeze(project=project)
    assert list(Snapshot.objects.values_list("pk", flat=True)) == [snapshot.pk] and snapshot.count == 5
    assert keys_in(s3_client, s3_artifacts, "artifacts/snapshots/") == [snapshot.uri.removeprefix(f"s3://{s3_artifacts}/")]
    another_host(settings, tmp_path, "gpu-2")
    assert artifacts.sha256_file(snapshot_path(snapshot)) == snapshot.sha256
