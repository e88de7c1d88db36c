"""Model and dataset cards (README.md with YAML front matter, as the Hugging Face Hub reads them).

`reward_model_card` and `checkpoint_card` render a saved folder's meta.json;
`dataset_card` describes a preference snapshot. `portable_model_id` turns what
a run was given as its base model (an alias, a hub id, a local folder) into an
id that means the same on another machine: the hub id where one is known,
never an absolute local path.

Pure module: no torch, no Django.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rewardmodel.lib.backbones import MODEL_ALIASES, _packaged_path, cache_root

PROJECT_TAG = "preference-flywheel"
LICENSE_NOTE = "license: other  # placeholder: set the license of the base model and of your annotators' data"


def portable_model_id(name_or_path: str | None) -> str | None:
    """A hub id (or at worst a bare folder name) for `name_or_path`; None for None or "".

    An alias of `backbones.MODEL_ALIASES` and a folder those aliases resolve to give the alias's hub
    id; a name that is not an existing path is taken as a hub id already; any other folder gives
    its name (a project checkpoint: pushed to the Hub, it goes by the repo its owner picks).
    """
    if not name_or_path:
        return None
    name = str(name_or_path).strip()
    packaged = MODEL_ALIASES.get(name.lower())
    if packaged is not None:
        return packaged.hub_id
    if not os.path.exists(name):
        return name.rstrip("/")
    path = Path(name).resolve()
    for packaged in MODEL_ALIASES.values():
        known = [_packaged_path(packaged)]
        if packaged.cache_name is not None:
            known.append(cache_root() / "models" / packaged.cache_name)
        if any(k is not None and Path(k).resolve() == path for k in known):
            return packaged.hub_id
    return path.name


def reward_model_card(meta: Mapping[str, Any], lineage: Mapping[str, Any] | None = None) -> str:
    """README.md for a reward-model folder, from its meta.json (`rewardmodel.lib.model.save_reward_model`);
    `lineage` (project, version, ... as the app knows them) heads the card's lineage table."""
    config = meta.get("config") or {}
    base = portable_model_id(config.get("backbone"))
    heads = int(meta.get("ensemble_size", 1))
    native = meta.get("layout") == "sequence_classification"
    rows = {
        **dict(lineage or {}),
        "base model": base,
        "data snapshot sha256": meta.get("snapshot_sha256"),
        "loss": config.get("loss"),
        "training mode": meta.get("mode"),
        "ensemble heads": heads,
        "pooling": meta.get("pooling"),
        "text format": meta.get("text_format"),
        "max length": meta.get("max_length"),
        "weights dtype": meta.get("dtype"),
        "code version": meta.get("code_version"),
    }
    reduce = "logits[:, 0]" if heads == 1 else "logits.mean(-1)  # the mean over the ensemble's heads"
    if native:
        usage = (
            "```python\n"
            "import torch\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(REPO)\n"
            "model = AutoModelForSequenceClassification.from_pretrained(REPO).eval()\n"
            "batch = tokenizer.pad({\"input_ids\": ids}, return_tensors=\"pt\")  # ids: token-id lists, see below\n"
            "with torch.no_grad():\n"
            "    logits = model(**batch).logits  # [batch, heads]\n"
            f"reward = {reduce}\n"
            "```\n\n"
            f"{_TEXT_NOTE[meta.get('text_format', 'plain')]}\n"
        )
    else:
        usage = (
            "This folder is not a transformers sequence-classification checkpoint "
            f"({meta.get('not_sequence_classification') or 'saved in the older layout'}): load it with the "
            "project's `rewardmodel.lib.model.load_reward_model`.\n"
        )
    front = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        *_base_model_field(base),
        "tags:",
        "- reward-model",
        f"- {PROJECT_TAG}",
        *([f"- {json.dumps(config['loss'])}"] if config.get("loss") else []),
        LICENSE_NOTE,
        "---",
    ]
    return "\n".join([
        *front,
        "",
        "# Reward model",
        "",
        f"A Bradley–Terry reward model trained by the {PROJECT_TAG} from human votes on pairs of completions. "
        f"It has {heads} scalar head{'s' if heads > 1 else ''} on one backbone; the reward of a text is "
        + ("the mean over the heads (their spread is the model's uncertainty)." if heads > 1 else "the head's output."),
        "",
        "## Lineage",
        "",
        _table(rows),
        "",
        "## Metrics",
        "",
        _table(_scalars(meta.get("metrics"))),
        "",
        "## Use",
        "",
        usage,
    ])


_TEXT_NOTE = {
    "plain": ("`ids` are a prompt's and its completion's tokens as the project formats them: the tokenizer's "
              "usual start tokens (BOS or [CLS]), the prompt, the completion, and for a causal model the EOS "
              "token (`rewardmodel.lib.data.PairFormatter`). Padding may be on either side."),
    "chat_template": ("`ids` are the conversation rendered with the tokenizer's chat template, the completion as "
                      "the last assistant turn: `tokenizer.apply_chat_template(messages + [{\"role\": "
                      "\"assistant\", \"content\": completion}])`. Padding may be on either side."),
}


def checkpoint_card(meta: Mapping[str, Any]) -> str:
    """README.md for a policy checkpoint folder, from its meta.json (`training.lib.checkpoint.save_checkpoint`)."""
    lineage = meta.get("lineage") or {}
    base = portable_model_id(meta.get("base_model"))
    adapter = meta.get("weights") == "adapter"
    rows = {
        "trained by": meta.get("kind"),
        "base model": base,
        "weights": meta.get("weights"),
        "weights dtype": meta.get("dtype"),
        "project": lineage.get("project"),
        "run": lineage.get("run"),
        "parent checkpoint": lineage.get("parent_checkpoint"),
        "data snapshot sha256": lineage.get("snapshot_sha256") or meta.get("snapshot_sha256"),
        "reward model version": lineage.get("reward_model_version"),
        "code version": meta.get("code_version"),
        "created": meta.get("created_at"),
    }
    if adapter:
        usage = ("```python\nfrom peft import AutoPeftModelForCausalLM\n\n"
                 "model = AutoPeftModelForCausalLM.from_pretrained(REPO)  # loads the base model named above\n```\n")
    else:
        usage = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                 "tokenizer = AutoTokenizer.from_pretrained(REPO)\nmodel = AutoModelForCausalLM.from_pretrained(REPO)\n```\n")
    kind = str(meta.get("kind") or "")
    front = [
        "---",
        f"library_name: {'peft' if adapter else 'transformers'}",
        "pipeline_tag: text-generation",
        *_base_model_field(base),
        "tags:",
        f"- {PROJECT_TAG}",
        *([f"- {json.dumps(kind)}"] if kind else []),
        LICENSE_NOTE,
        "---",
    ]
    return "\n".join([
        *front,
        "",
        "# Policy checkpoint",
        "",
        f"A policy trained by the {PROJECT_TAG}" + (f" with {kind.upper()}" if kind else "")
        + (", saved as a LoRA adapter over the base model." if adapter else "."),
        "",
        "## Lineage",
        "",
        _table(rows),
        "",
        "## Metrics",
        "",
        _table(_scalars(meta.get("metrics"))),
        "",
        "## Use",
        "",
        usage,
    ])


def dataset_card(*, file_name: str, file_format: str, data_format: str, rows: int, sha256: str,
                 project: str, votes: int | None = None, filters: Mapping[str, Any] | None = None,
                 created: str | None = None) -> str:
    """README.md for a preference snapshot uploaded as a Hub dataset (one data file, the default config)."""
    table = {
        "project": project,
        "data file": f"`{file_name}` ({file_format})",
        "row format": data_format,
        "rows": rows,
        "votes it was built from": votes,
        "sha256 of the data file": sha256,
        "filters": json.dumps(dict(filters), sort_keys=True) if filters else None,
        "created": created,
    }
    return "\n".join([
        "---",
        LICENSE_NOTE,
        "tags:",
        f"- {PROJECT_TAG}",
        "- preference",
        "- human-feedback",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {json.dumps(file_name)}",
        "---",
        "",
        "# Preference snapshot",
        "",
        f"A frozen export of human preference votes from the {PROJECT_TAG} project `{project}`. "
        "The row format is described in the project's docs/export-formats.md.",
        "",
        _table(table),
        "",
        "Check a download with `sha256sum` against the value above.",
        "",
    ])


#: Metrics about how a run ran (speed, layout), not about the model: left out of cards (meta.json has them).
_RUN_FIGURES = ("_seconds", "per_s", "cuda_graph", "flat_tokens", "packing", "prefix_sharing", "shared_prefix",
                "padding_fraction", "tokens_per_s")


def _base_model_field(base: str | None) -> list[str]:
    """The front matter's ``base_model``, only for an owner/name hub id: the Hub rejects a card whose
    base_model names no model on it (a bare folder name stays in the card's table)."""
    return [f"base_model: {json.dumps(base)}"] if base and "/" in base else []


def _scalars(metrics: Any) -> dict[str, Any]:
    """The model's numeric metrics (not NaN, not the run's speed and layout figures), 4 significant digits."""
    if not isinstance(metrics, Mapping):
        return {}
    return {str(k): (f"{v:.4g}" if isinstance(v, float) else v) for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
            and not any(part in str(k) for part in _RUN_FIGURES)}


def _table(rows: Mapping[str, Any]) -> str:
    kept = [(k, v) for k, v in rows.items() if v is not None and v != ""]
    if not kept:
        return "(none recorded)"
    cells = [f"| {k} | {str(v).replace('|', '/')} |" for k, v in kept]
    return "\n".join(["| | |", "|---|---|", *cells])
