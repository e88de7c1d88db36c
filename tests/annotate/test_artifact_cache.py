"""A host's artifact cache stays within ARTIFACTS_CACHE_MAX_GB: least recently used copies go first,
never one a run on this host still reads (a pin), and whatever is pruned is fetched again, verified."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from annotate import artifact_cache, artifacts
from annotate.artifact_cache import GIB
from tests.annotate.test_artifacts import a_folder, files_of
from tests.store import another_host

ENTRY = 300_000  # a_folder's weight file; each cached copy is a little more


@pytest.fixture(autouse=True)
def no_pins_left():
    artifact_cache.release_pins()
    yield
    artifact_cache.release_pins()


def _published(names: list[str]) -> dict[str, tuple[str, dict[str, bytes]]]:
    made = {}
    for name in names:
        url = artifacts.artifact_url("checkpoints", "demo", name)
        staging = artifacts.staging_path(url)
        expected = files_of(a_folder(staging))
        artifacts.folder_publish(staging, url)
        made[name] = (url, expected)
    return made


def _fetched_then_done(url: str) -> Path:
    """What a run does: fetch its input, read it, end (its pins released)."""
    folder = artifacts.folder_fetch(url)
    artifact_cache.release_pins()
    return folder


def test_the_least_recently_used_copy_goes_first_and_comes_back_verified(settings, tmp_path, s3_artifacts):
    made = _published(["a", "b", "c"])
    another_host(settings, tmp_path, "gpu")
    settings.ARTIFACTS_CACHE_MAX_GB = 2.5 * ENTRY / GIB  # room for two copies, not three
    a = _fetched_then_done(made["a"][0])
    b = _fetched_then_done(made["b"][0])
    os.utime(a.parent / artifact_cache.STAMP, (1, 1))
    os.utime(b.parent / artifact_cache.STAMP, (2, 2))
    assert _fetched_then_done(made["a"][0]) == a  # used again: now b is the least recent
    c = _fetched_then_done(made["c"][0])
    assert a.is_dir() and c.is_dir() and not b.exists()
    assert artifact_cache.cache_bytes() <= settings.ARTIFACTS_CACHE_MAX_GB * GIB
    again = _fetched_then_done(made["b"][0])  # fetched anew through its manifest
    assert {k: v for k, v in files_of(again).items() if k != "manifest.json"} == made["b"][1]


def test_a_pinned_copy_is_never_pruned_until_its_run_ends(settings, tmp_path, s3_artifacts):
    made = _published(["a", "b"])
    another_host(settings, tmp_path, "gpu")
    a = artifacts.folder_fetch(made["a"][0])  # this process's run still reads it
    assert artifact_cache.prune(budget_bytes=1) == [] and a.is_dir()
    artifact_cache.release_pins()
    assert artifact_cache.prune(budget_bytes=1) == [a.parent] and not a.exists()


def test_another_process_s_pin_holds_its_copy(settings, tmp_path, s3_artifacts):
    """A run in another process (a torchrun rank, a second worker) pins what it fetched: a prune here leaves it."""
    made = _published(["a", "b"])
    host = another_host(settings, tmp_path, "gpu")
    a = _fetched_then_done(made["a"][0])
    b = _fetched_then_done(made["b"][0])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_SH); print('pinned', flush=True); sys.stdin.read()",
         str(artifact_cache._lock_path(a.parent))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "pinned"
        assert artifact_cache.prune(budget_bytes=1) == [b.parent]
        assert a.is_dir() and not b.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert artifact_cache.prune(budget_bytes=1) == [a.parent]  # its process ended: the pin went with it
    assert not any(p.name.startswith(".pruned-") for p in (host / "cache" / "folders").iterdir())


def test_no_limit_prunes_nothing_and_a_crash_s_leftovers_are_swept(settings, tmp_path, s3_artifacts):
    made = _published(["a"])
    host = another_host(settings, tmp_path, "gpu")
    settings.ARTIFACTS_CACHE_MAX_GB = 0
    a = _fetched_then_done(made["a"][0])
    assert artifact_cache.prune() == [] and a.is_dir()
    leftover = host / "cache" / "folders" / ".pruned-deadbeef-1234"
    (leftover / "x").mkdir(parents=True)
    settings.ARTIFACTS_CACHE_MAX_GB = 100.0
    artifact_cache.prune()
    assert not leftover.exists() and a.is_dir()  # within budget: kept


def test_a_run_releases_the_copies_it_pinned(project, settings, tmp_path, s3_artifacts):
    from training.reward import reward_model_start
    from training.runs import run_execute

    made = _published(["a"])
    another_host(settings, tmp_path, "gpu")
    run = reward_model_start(project=project, enqueue=False)
    seen = []

    def job(run, reporter):
        seen.append(artifacts.folder_fetch(made["a"][0]))
        assert artifact_cache.prune(budget_bytes=1) == []  # pinned while the run is on

    run_execute(run.pk, job)
    assert artifact_cache.prune(budget_bytes=1) == [seen[0].parent]


def test_a_copy_moved_out_of_the_cache_is_fetched_again(settings, tmp_path, s3_artifacts):
    """A Ray run's output is moved out of its cache entry (training.ray_jobs.collect); an entry left with
    its stamp alone is stale, and a second fetch (a re-attached worker collecting again) gets whole files."""
    made = _published(["a"])
    another_host(settings, tmp_path, "gpu")
    first = _fetched_then_done(made["a"][0])
    first.rename(tmp_path / "moved-out")
    assert [p.name for p in first.parent.iterdir()] == [artifact_cache.STAMP]
    again = _fetched_then_done(made["a"][0])
    assert again == first and {k: v for k, v in files_of(again).items() if k != "manifest.json"} == made["a"][1]


def test_a_data_file_a_run_reads_again_is_pinned_too(settings, tmp_path, s3_artifacts):
    url = artifacts.artifact_url("snapshots", "demo", "7.jsonl")
    staging = artifacts.staging_path(url)
    staging.write_text('{"prompt": "p"}\n')
    digest = artifacts.sha256_file(staging)
    artifacts.file_publish(staging, url)
    another_host(settings, tmp_path, "gpu")
    pinned = artifacts.file_fetch(url, sha256=digest, pin=True)  # the ranks read it after the worker did
    assert artifact_cache.prune(budget_bytes=1) == [] and pinned.is_file()
    artifact_cache.release_pins()
    assert artifact_cache.prune(budget_bytes=1) == [pinned.parent]
