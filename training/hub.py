"""Publishing artifacts on the Hugging Face Hub: checkpoints, reward models and preference snapshots.

`hub_push` stages what a repo should hold in a temporary folder (links to the artifact's files,
pulled from the store first when it lives on s3, plus a card), then creates the repo and uploads
that folder in one commit through `huggingface_hub.HfApi`. Staging never writes into the store's
folders (their manifests stay true); it is where older artifacts get what they lack:

- a checkpoint or reward model without a README.md gets a card rendered from its meta.json;
- an adapter whose adapter_config.json names its base by a local path gets a portable id;
- a reward model in the old layout (reward_head.safetensors) is re-saved as a transformers
  sequence-classification checkpoint, so the Hub copy loads with AutoModelForSequenceClassification.

Everything the caller names is checked first (`HubError` says what is wrong); nothing is uploaded
unless the whole folder is staged.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotate import artifacts
from annotate.models import Checkpoint, Project, Snapshot
from annotate.services import InvalidInput
from annotate.snapshots import snapshot_path
from rewardmodel.lib.cards import PROJECT_TAG, checkpoint_card, dataset_card, portable_model_id, reward_model_card
from rewardmodel.models import RewardModel

KINDS = ("checkpoint", "reward_model", "snapshot")
#: The store's own bookkeeping, never uploaded.
SKIPPED = frozenset({artifacts.MANIFEST})


class HubError(ValueError):
    """What the caller named cannot be pushed (unknown, not a stored artifact, corrupt, a bad repo id)."""


@dataclass(frozen=True)
class Staged:
    """A folder ready to upload as one commit to a repo of `repo_type` ("model" or "dataset")."""

    folder: Path
    repo_type: str
    description: str


def hub_push(*, project: Project, kind: str, ident: str, repo_id: str, private: bool = False,
             token: str | None = None, api: Any = None, dry_run: bool = False) -> tuple[Staged, list[str], str]:
    """Upload the artifact `kind` / `ident` of `project` to the Hub repo `repo_id`; (staged, files, url).

    `ident`: a checkpoint's name, a reward model's version, a snapshot's id. `api`: an `HfApi`
    (default: one with `token`, which falls back to HF_TOKEN or the saved login). With `dry_run`
    nothing is sent; `url` is then "". Raises HubError for anything the caller named wrong, and
    for a refusal by the Hub (no permission, a network failure), with its message.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(f"{repo_id!r} is not a Hub repo id (owner/name): {error}") from None
    if "/" not in repo_id:
        raise HubError(f"{repo_id!r} names no owner: use owner/name")
    with _staged(project, kind, ident) as staged:
        files = sorted(str(p.relative_to(staged.folder)) for p in staged.folder.rglob("*") if p.is_file())
        if dry_run:
            return staged, files, ""
        hub = api if api is not None else HfApi(token=token)
        try:
            hub.create_repo(repo_id, repo_type=staged.repo_type, private=private, exist_ok=True)
            commit = hub.upload_folder(repo_id=repo_id, folder_path=str(staged.folder), repo_type=staged.repo_type,
                                       commit_message=f"Upload {staged.description} from {PROJECT_TAG}")
        except Exception as error:  # the Hub's refusal or a network failure, for the caller's message
            raise HubError(f"the Hub refused the upload to {repo_id}: {error}") from error
    return staged, files, str(getattr(commit, "commit_url", "") or commit)


@contextmanager
def _staged(project: Project, kind: str, ident: str) -> Iterator[Staged]:
    stage = {"checkpoint": _stage_checkpoint, "reward_model": _stage_reward_model, "snapshot": _stage_snapshot}
    if kind not in stage:
        raise HubError(f"cannot push a {kind!r}; choose one of {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory(prefix="hub-push-") as tmp:
        folder = Path(tmp) / "upload"
        folder.mkdir()
        repo_type, description = stage[kind](project, ident, folder)
        yield Staged(folder=folder, repo_type=repo_type, description=description)


def _stage_checkpoint(project: Project, name: str, into: Path) -> tuple[str, str]:
    checkpoint = Checkpoint.objects.filter(project=project, name=name).first()
    if checkpoint is None:
        names = ", ".join(Checkpoint.objects.filter(project=project).values_list("name", flat=True)[:20]) or "none"
        raise HubError(f"no checkpoint named {name!r} in {project.slug} (checkpoints: {names})")
    if not checkpoint.uri:
        raise HubError(f"checkpoint {name!r} has no weights here: it is an endpoint or imported completions")
    source = _local_folder(checkpoint.uri, f"checkpoint {name!r}")
    meta = _read_meta(source)
    _link_files(source, into, skip={"README.md", "adapter_config.json"})
    adapter_config = source / "adapter_config.json"
    if adapter_config.is_file():
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
        if base and os.path.isabs(base):  # saved before adapters named a portable base
            config["base_model_name_or_path"] = portable_model_id(meta.get("base_model") or base)
        (into / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    card = source / "README.md"
    lineage = {"project": project.slug, "parent_checkpoint": checkpoint.parent and checkpoint.parent.name,
               **(meta.get("lineage") or {})}
    text = card.read_text(encoding="utf-8") if card.is_file() else checkpoint_card({**meta, "lineage": lineage})
    (into / "README.md").write_text(text, encoding="utf-8")
    return "model", f"checkpoint {name} of {project.slug}"


def _stage_reward_model(project: Project, version: str, into: Path) -> tuple[str, str]:
    number = _positive_int(version, "a reward-model version")
    row = RewardModel.objects.filter(project=project, version=number).first()
    if row is None:
        known = ", ".join(f"v{v}" for v in RewardModel.objects.filter(project=project)
                          .values_list("version", flat=True)[:20]) or "none"
        raise HubError(f"no reward model v{number} in {project.slug} (published: {known})")
    source = _local_folder(row.artifact_uri, f"reward model v{number}")
    from rewardmodel.lib.model import HEAD_FILE

    if (source / HEAD_FILE).is_file():
        from rewardmodel.lib.hf_layout import resave_reward_model  # torch: only for folders in the old layout

        resave_reward_model(source, into)
    else:
        _link_files(source, into, skip={"README.md"})
    lineage = {"project": project.slug, "version": row.version, "snapshot": row.snapshot_id, "votes": row.votes,
               "pairs": row.pairs}
    (into / "README.md").write_text(reward_model_card(_read_meta(into), lineage), encoding="utf-8")
    return "model", f"reward model v{number} of {project.slug}"


def _stage_snapshot(project: Project, ident: str, into: Path) -> tuple[str, str]:
    number = _positive_int(ident, "a snapshot id")
    snapshot = Snapshot.objects.filter(project=project, pk=number).first()
    if snapshot is None:
        raise HubError(f"no snapshot {number} in {project.slug}")
    try:
        path = snapshot_path(snapshot)
    except InvalidInput as error:
        raise HubError(str(error)) from None
    if artifacts.sha256_file(path) != snapshot.sha256:
        raise HubError(f"snapshot {number}: {path} does not match its recorded sha256; refusing to publish it")
    os.symlink(path.resolve(), into / path.name)
    card = dataset_card(
        file_name=path.name, file_format="Parquet" if path.suffix == ".parquet" else "JSON Lines",
        data_format=snapshot.format, rows=snapshot.count, sha256=snapshot.sha256, project=project.slug,
        votes=snapshot.votes, filters=snapshot.filters, created=snapshot.created_at.isoformat(timespec="seconds"),
    )
    (into / "README.md").write_text(card, encoding="utf-8")
    return "dataset", f"snapshot {number} of {project.slug}"


def _local_folder(uri: str, what: str) -> Path:
    """The artifact's folder on this host (pulled and verified from s3 first); HubError if there is none."""
    try:
        source = artifacts.model_source(uri)
    except artifacts.ArtifactError as error:
        raise HubError(f"{what}: {error}") from None
    folder = Path(source)
    if not folder.is_dir():
        raise HubError(f"{what} is {uri!r}, not a folder this project stored; there is nothing to upload")
    return folder


def _link_files(source: Path, into: Path, *, skip: set[str]) -> None:
    """Symlink every file of `source` (sub-folders kept) into `into`, but the store's and `skip`'s."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or str(rel) in SKIPPED | skip:
            continue
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path.resolve(), into / rel)


def _read_meta(folder: Path) -> dict[str, Any]:
    meta = folder / "meta.json"
    return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}


def _positive_int(text: str, what: str) -> int:
    try:
        number = int(text)
    except (TypeError, ValueError):
        raise HubError(f"{text!r} is not {what} (a whole number)") from None
    if number < 1:
        raise HubError(f"{text!r} is not {what} (a whole number from 1)")
    return number
