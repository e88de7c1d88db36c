"""`python -m training.lib.generation`: prompts file in, completions file out, importable by the web app."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from annotate import imports
from annotate.models import Comparison, Completion
from tests.tiny import save_tiny_llama
from training.lib.generation_cli import main

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    {"prompt": "hello world"},
    {"messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "yes"},
                  {"role": "user", "content": "the dog said no"}]},
    {"prompt": [{"role": "user", "content": "good bad very"}]},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.django_db
def test_local_completions_come_back_in_order_and_import_into_a_project(project, tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "tiny", chat=True)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    files = {}
    for name, seed in (("first", 1), ("second", 2)):
        files[name] = tmp_path / f"{name}.jsonl"
        assert main(["--prompts", str(prompts), "--model", str(model), "--checkpoint-name", name,
                     "--out", str(files[name]), "--max-new-tokens", "6", "--seed", str(seed),
                     "--temperature", "1.0"]) == 0
        summary = json.loads(capsys.readouterr().out)
        if not torch.cuda.is_available():  # "auto" resolved, and said
            assert (summary["device"], summary["dtype"]) == ("cpu", "float32") and summary["seconds"] >= 0
        rows = read_jsonl(files[name])
        assert summary["completions"] == len(rows) and summary["completions"] + summary["empty_left_out"] == 3
        asked = ["hello world", "the dog said no", "good bad very"]
        answered = [r["prompt"][-1]["content"] for r in rows]
        assert len(rows) >= 2 and answered == [a for a in asked if a in answered]  # input order, none invented
        assert all(r["checkpoint"] == name and r["sampling"]["max_new_tokens"] == 6 and r["tokens"] >= 1
                   for r in rows)
    for name in files:
        with open(files[name], "rb") as stream:
            imports.import_completions(project=project, stream=stream, filename=f"{name}.jsonl")
    both = {c.prompt_id for c in Completion.objects.filter(checkpoint__name="first")} & {
        c.prompt_id for c in Completion.objects.filter(checkpoint__name="second")}
    assert Comparison.objects.filter(project=project).count() == len(both) > 0


def test_through_an_openai_compatible_endpoint(chat_server, tmp_path, monkeypatch, capsys):
    base_url, calls = chat_server
    monkeypatch.setenv("MY_KEY", "sk-cli")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "served.jsonl"
    assert main(["--prompts", str(prompts), "--endpoint", base_url, "--model", "served-model",
                 "--api-key-env", "MY_KEY", "--concurrency", "2", "--out", str(out)]) == 0
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == ["Echo: hello world", "Echo: the dog said no", "Echo: good bad very"]
    assert {r["checkpoint"] for r in rows} == {"served-model"}
    assert calls[-1][1]["model"] == "served-model" and calls[-1][2] == "Bearer sk-cli"
    summary = json.loads(capsys.readouterr().out)
    assert summary["completions"] == 3 and summary["device"] is None and summary["dtype"] is None
    assert all(set(r["sampling"]).isdisjoint({"device", "dtype", "kv_cache"}) for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_that_is_not_there_is_a_clear_error_and_no_file(tmp_path):
    model = save_tiny_llama(tmp_path / "tiny", chat=True)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:1])
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit, match=r"error: device='cuda:0', but this process sees 0 CUDA GPU"):
        main(["--prompts", str(prompts), "--model", str(model), "--device", "cuda:0", "--out", str(out)])
    assert not out.exists()


def test_a_bad_prompts_file_names_the_line_and_field_and_writes_nothing(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "fine"}, {"messages": [{"role": "user"}]}])
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "training.lib.generation", "--prompts", str(prompts),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "line 2, field 'messages'" in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [prompts]


def test_an_endpoint_that_cannot_be_reached_is_a_clear_error_and_no_file(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:1])
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit, match="error: .*127.0.0.1"):
        main(["--prompts", str(prompts), "--endpoint", f"http://127.0.0.1:{port}/v1", "--model", "m",
              "--retries", "0", "--timeout", "2", "--out", str(out)])
    assert not out.exists()
