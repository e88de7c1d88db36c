"""An S3-compatible store for the tests: the server .ci/run starts, else moto's server in this process.

``.ci/run`` starts moto's standalone server (``moto_server``) on 127.0.0.1 and names it in
``S3_TEST_ENDPOINT_URL``; tests that get ``s3_artifacts`` then talk to another process over HTTP,
as a web host and the GPU hosts talk to the store. Without that variable (``make test``) the same
server runs in a thread of the test process, so the S3 path is tested on every run, not only in CI.
Either way each test gets a bucket of its own. A server named but not answering skips the test.
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import s3fs

KEYS = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint():
    """The store's endpoint URL for the whole session."""
    named = os.environ.get("S3_TEST_ENDPOINT_URL", "").strip()
    if named:
        parsed = urlparse(named)
        try:
            socket.create_connection((parsed.hostname, parsed.port or 80), timeout=2).close()
        except OSError:
            pytest.skip(f"the S3-compatible server at {named} is not answering")
        yield named
        return
    server_module = pytest.importorskip("moto.server", reason="moto (requirements-dev.txt) runs the store")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_client(s3_endpoint):
    boto3 = pytest.importorskip("boto3")
    return boto3.client("s3", endpoint_url=s3_endpoint, **KEYS)


@pytest.fixture
def s3_artifacts(settings, tmp_path, s3_endpoint, s3_client):
    """ARTIFACTS_URL on a fresh bucket of the store; this host's cache and scratch under tmp_path."""
    bucket = f"flywheel-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    settings.ARTIFACTS_URL = f"s3://{bucket}/artifacts"
    settings.S3_ENDPOINT_URL = s3_endpoint
    settings.S3_REGION = KEYS["region_name"]
    settings.AWS_ACCESS_KEY_ID = KEYS["aws_access_key_id"]
    settings.AWS_SECRET_ACCESS_KEY = KEYS["aws_secret_access_key"]
    settings.ARTIFACTS_DIR = tmp_path / "gpu-host" / "scratch"
    settings.ARTIFACTS_CACHE_DIR = tmp_path / "gpu-host" / "cache"
    return bucket


def keys_in(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def another_host(settings, tmp_path: Path, name: str) -> Path:
    """Act as another host from now on: an empty cache and scratch folder, nothing of the previous host's disk."""
    settings.ARTIFACTS_DIR = tmp_path / name / "scratch"
    settings.ARTIFACTS_CACHE_DIR = tmp_path / name / "cache"
    return tmp_path / name


def lose_the_store_after(monkeypatch, uploads: int, *, under: str = "") -> None:
    """Uploads of keys containing ``under`` fail once ``uploads`` of them went through: a host losing the
    store mid-upload. ``store_back`` heals it."""
    real, done = s3fs.S3FileSystem._put_file, []

    async def put_file(self, lpath, rpath, *args, **kwargs):
        if under in rpath:
            if len(done) == uploads:
                raise ConnectionError("connection to the store lost mid-upload")
            done.append(rpath)
        return await real(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", put_file)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached instance holds the real method


def store_back(monkeypatch) -> None:
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()


def publish_tiny_base(project, name: str = "base", *, state: str = "incumbent"):
    """A tiny chat Llama published to the store (ARTIFACTS_URL) as the project's incumbent checkpoint
    (or in ``state``)."""
    from annotate import artifacts
    from annotate.models import Checkpoint
    from tests.tiny import save_tiny_llama

    url = artifacts.artifact_url("checkpoints", project.slug, name)
    staging = artifacts.staging_path(url)
    save_tiny_llama(staging, chat=True)
    return Checkpoint.objects.create(project=project, name=name, uri=artifacts.folder_publish(staging, url),
                                     state=state)


def publish_tiny_reward_model(project, snapshot, version: int = 1):
    """A tiny Llama-backed reward model (the tiny policy's tokenizer) published to the store, and its row."""
    import torch
    from transformers import LlamaModel

    from annotate import artifacts
    from rewardmodel.lib.model import RewardModel as Scorer
    from rewardmodel.lib.model import save_reward_model
    from rewardmodel.models import RewardModel
    from tests.tiny import llama_config, llama_tokenizer

    url = artifacts.artifact_url("reward_models", project.slug, f"v{version}")
    staging = artifacts.staging_path(url)
    tok = llama_tokenizer(chat=True)
    torch.manual_seed(1)
    save_reward_model(Scorer(LlamaModel(llama_config(tok)), tok, pooling="last"), staging, {})
    return RewardModel.objects.create(project=project, version=version, backbone="tiny-llama", snapshot=snapshot,
                                      artifact_uri=artifacts.folder_publish(staging, url))
