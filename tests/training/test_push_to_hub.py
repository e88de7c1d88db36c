"""manage.py push_to_hub: what each artifact uploads (files, repo type, card), up to the Hub's API call."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification

from annotate.models import Checkpoint
from annotate.votes import vote_record
from rewardmodel.lib.model import HEAD_FILE, load_reward_model
from rewardmodel.lib.score import score
from rewardmodel.models import RewardModel
from tests.conftest import make_comparisons
from tests.tiny import save_tiny_llama
from training.lib.checkpoint import load_policy, save_checkpoint
from training.reward import reward_model_start, reward_model_train_job
from training.runs import run_execute


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls and copies the folder as it was uploaded."""

    calls: list[tuple[str, dict]] = []
    uploaded: Path | None = None
    refuse: Exception | None = None

    def __init__(self, token=None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        if self.refuse is not None:
            raise self.refuse
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        shutil.copytree(kwargs["folder_path"], FakeHub.uploaded)  # follows the staged links: the bytes sent
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/1"})()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    FakeHub.calls, FakeHub.uploaded, FakeHub.refuse = [], tmp_path / "uploaded", None
    monkeypatch.setattr("huggingface_hub.HfApi", FakeHub)
    return FakeHub


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.ARTIFACTS_DIR


@pytest.fixture
def reward_model(project, annotator, artifacts, tmp_path) -> RewardModel:
    """Reward model v1 of "demo", trained through the app on a tiny Llama from 24 votes."""
    for c in make_comparisons(project, 24, texts=("a good answer", "a bad answer")):
        vote_record(annotator=annotator, comparison_id=c.pk, choice="a" if "good" in c.completion_a.text else "b")
    backbone = str(save_tiny_llama(tmp_path / "tiny-llama"))
    run = reward_model_start(project=project, config={"backbone": backbone, "batch_size": 8, "epochs": 1},
                             enqueue=False)
    run = run_execute(run.pk, reward_model_train_job)
    return run.reward_model_out


def _push(*args: str) -> None:
    call_command("push_to_hub", "--project", "demo", *args)


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_reward_model_uploads_its_folder_and_card_and_loads_in_transformers(hub, reward_model):
    _push("--reward-model", "1", "--repo", "me/demo-rm", "--private", "--token", "hf_x")
    folder = Path(reward_model.artifact_uri.removeprefix("file://"))
    assert hub.calls[0] == ("init", {"token": "hf_x"})
    assert hub.calls[1] == ("create_repo", {"repo_id": "me/demo-rm", "repo_type": "model", "private": True,
                                            "exist_ok": True})
    upload = hub.calls[2][1]
    assert upload["repo_id"] == "me/demo-rm" and upload["repo_type"] == "model"
    sent = {str(p.relative_to(hub.uploaded)) for p in hub.uploaded.rglob("*") if p.is_file()}
    assert sent == {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert {"README.md", "config.json", "model.safetensors", "meta.json", "tokenizer.json"} <= sent
    assert _sha(hub.uploaded / "model.safetensors") == _sha(folder / "model.safetensors")
    card = (hub.uploaded / "README.md").read_text()
    assert reward_model.snapshot.sha256 in card and "| base model | tiny-llama |" in card
    assert "| project | demo |" in card and "| version | 1 |" in card and f"| votes | {reward_model.votes} |" in card
    assert _front_matter(card)["library_name"] == "transformers" and "reward-model" in _front_matter(card)["tags"]
    ours = load_reward_model(folder)
    prompts, completions = ["hello world", "the cat"], ["a good answer", "a bad answer"]
    ids = ours.formatter.encode_for_scoring(prompts, completions, ours.max_length)
    theirs = AutoModelForSequenceClassification.from_pretrained(hub.uploaded).eval()
    with torch.no_grad():
        logits = theirs(torch.tensor(ids), attention_mask=torch.ones(len(ids), len(ids[0]), dtype=torch.long)).logits
    assert logits[:, 0].tolist() == pytest.approx(score(ours, prompts, completions), abs=1e-5)


def test_an_old_layout_reward_model_is_uploaded_in_the_transformers_layout(hub, reward_model, tmp_path):
    folder = Path(reward_model.artifact_uri.removeprefix("file://"))
    model = load_reward_model(folder)
    old = tmp_path / "old-rm"  # what save_reward_model wrote before: backbone files + reward_head.safetensors
    model.backbone.save_pretrained(old)
    model.tokenizer.save_pretrained(old)
    save_file({"head.weight": model.head.weight.detach().contiguous(), "tie_param": torch.zeros(1)},
              str(old / HEAD_FILE))
    meta = json.loads((folder / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "format": "rewardmodel.lib/1", "layout": None}))
    RewardModel.objects.create(project=reward_model.project, version=2, backbone="tiny", snapshot=reward_model.snapshot,
                               artifact_uri=old.as_uri())
    _push("--reward-model", "2", "--repo", "me/demo-rm")
    assert not (hub.uploaded / HEAD_FILE).exists() and (hub.uploaded / "README.md").is_file()
    with safe_open(str(hub.uploaded / "model.safetensors"), framework="pt") as f:
        torch.testing.assert_close(f.get_tensor("score.weight"), model.head.weight.detach())
    assert json.loads((hub.uploaded / "meta.json").read_text())["snapshot_sha256"] == reward_model.snapshot.sha256
    assert not any(old.rglob("README.md"))  # the stored folder is left as it was


def test_a_snapshot_uploads_its_file_with_a_dataset_card(hub, reward_model):
    snapshot = reward_model.snapshot
    _push("--snapshot", str(snapshot.pk), "--repo", "me/demo-prefs")
    assert hub.calls[1][1]["repo_type"] == "dataset" and hub.calls[2][1]["repo_type"] == "dataset"
    files = sorted(p.name for p in hub.uploaded.iterdir())
    data_name = Path(snapshot.uri).name
    assert files == sorted(["README.md", data_name])
    assert _sha(hub.uploaded / data_name) == snapshot.sha256
    card = (hub.uploaded / "README.md").read_text()
    front = _front_matter(card)
    assert front["license"] == "other" and front["configs"][0]["data_files"][0]["path"] == data_name
    assert snapshot.sha256 in card and f"| rows | {snapshot.count} |" in card and "| project | demo |" in card
    assert f"| row format | {snapshot.format} |" in card


def test_an_old_adapter_checkpoint_uploads_with_a_portable_base_and_a_card(hub, project, artifacts, tmp_path):
    base = save_tiny_llama(tmp_path / "tiny-llama")
    model, tok, path = load_policy(str(base), lora={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"})
    out = save_checkpoint(model, tok, tmp_path / "ckpt", {"kind": "dpo", "base_model": path,
                                                          "lineage": {"run": 3, "snapshot_sha256": "ef" * 32}},
                          merge_lora=False)
    config = json.loads((out / "adapter_config.json").read_text())  # as saved before adapters named a portable base
    (out / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": path}))
    (out / "README.md").unlink()
    Checkpoint.objects.create(project=project, name="dpo-r3", uri=out.as_uri(), meta={})
    _push("--checkpoint", "dpo-r3", "--repo", "me/demo-policy")
    sent = json.loads((hub.uploaded / "adapter_config.json").read_text())
    assert sent["base_model_name_or_path"] == "tiny-llama"
    card = (hub.uploaded / "README.md").read_text()
    assert _front_matter(card)["library_name"] == "peft" and "| base model | tiny-llama |" in card
    assert "ef" * 32 in card and "| project | demo |" in card
    assert str(tmp_path) not in card
    assert {"adapter_model.safetensors", "meta.json", "tokenizer.json"} <= {p.name for p in hub.uploaded.iterdir()}


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoint", "nope", "--repo", "me/x"], "no checkpoint named 'nope' in demo"),
    (["--checkpoint", "ckpt-a", "--repo", "me/x"], "has no weights here"),
    (["--reward-model", "9", "--repo", "me/x"], "no reward model v9 in demo"),
    (["--reward-model", "v1", "--repo", "me/x"], "is not a reward-model version"),
    (["--snapshot", "999", "--repo", "me/x"], "no snapshot 999 in demo"),
    (["--snapshot", "1", "--repo", "not a repo!"], "is not a Hub repo id"),
    (["--snapshot", "1", "--repo", "justaname"], "names no owner"),
])
def test_what_cannot_be_pushed_is_a_clear_error_and_nothing_is_sent(hub, comparisons, args, message):
    with pytest.raises(CommandError, match=message):
        _push(*args)
    assert not any(name in ("create_repo", "upload_folder") for name, _ in hub.calls)


def test_a_hub_refusal_is_a_command_error(hub, reward_model):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx.Response(403, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    hub.refuse = HfHubHTTPError("403 Forbidden: you cannot write to org/x", response=response)
    with pytest.raises(CommandError, match="refused the upload to org/x: 403 Forbidden"):
        _push("--snapshot", str(reward_model.snapshot.pk), "--repo", "org/x")


def test_a_dry_run_lists_the_files_and_sends_nothing(hub, reward_model, capsys):
    _push("--snapshot", str(reward_model.snapshot.pk), "--repo", "me/x", "--dry-run")
    out = capsys.readouterr().out
    assert "Would upload snapshot" in out and "README.md" in out and Path(reward_model.snapshot.uri).name in out
    assert [name for name, _ in hub.calls] == []
