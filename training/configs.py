"""One source of run defaults per kind, and a run's JSON config turned into the library's config.

A run's row keeps what its starter chose (``TrainingRun.config``); everything else comes from
``run_defaults``, which every way of starting a run reads: the console's start forms (their
initial values), the API and the commands (through ``training.starts.run_start``), the loop and
automatic retraining. The defaults are the library dataclasses' own, except the few in
``APP_DEFAULTS``, sized so that a run finishes on a CPU with SmolLM2-135M (the embedded default).
Importing this module imports no torch: web processes validate configs with it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from django.conf import settings

from rewardmodel.lib.config import RewardConfig
from training.lib.dpo_config import DPOConfig
from training.lib.ppo_config import PPOConfig
from training.models import TrainingRun

Kind = TrainingRun.Kind

# Generation has no library dataclass of its own here (local checkpoints and endpoints share
# these settings), so every one of its defaults is listed. ``prompts``: how many of the project's
# prompts a battle samples (None: all of them).
SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "seed", "batch_size")
GENERATION_DEFAULTS: dict[str, Any] = {
    "prompts": 48, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256, "seed": 0, "batch_size": 8,
}

# Where the app departs from the library dataclasses' defaults: runs sized to finish in minutes on
# a CPU with the demo's SmolLM2-135M. These are the values that automatic retraining, the loop,
# the API and the commands have always used; only the console's form differed (see the README).
APP_DEFAULTS: dict[str, dict[str, Any]] = {
    Kind.REWARD_MODEL: {"epochs": 1.0, "batch_size": 16, "max_length": 384},
    Kind.DPO: {"epochs": 1.0, "batch_size": 4, "max_length": 512, "max_prompt_length": 256, "learning_rate": 5e-6},
    # ``prompts``: how many of the project's prompts PPO rolls out on (None: all of them).
    Kind.PPO: {"steps": 20, "batch_size": 8, "mini_batch_size": 4, "max_new_tokens": 48, "prompts": None},
}
# ``world_size``: how many processes (one per GPU) run the job under torchrun; None takes the
# worker's ``WORKER_WORLD_SIZE`` (1 unless set). The library configs never see it: the launcher does.
for _kind in (Kind.REWARD_MODEL, Kind.DPO, Kind.PPO):
    APP_DEFAULTS[_kind]["world_size"] = None

# Settings a run takes from its inputs, never from its config.
_FROM_INPUTS = {"model", "reward"}
_CLASSES = {Kind.REWARD_MODEL: RewardConfig, Kind.DPO: DPOConfig, Kind.PPO: PPOConfig}
# App-level settings a kind has beside its library dataclass's fields.
_APP_ONLY = {Kind.REWARD_MODEL: {"world_size"}, Kind.DPO: {"world_size"}, Kind.PPO: {"prompts", "world_size"}}


def _library_defaults(cls) -> dict[str, Any]:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
        if f.name not in _FROM_INPUTS
        and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
    }


def run_defaults(kind: str) -> dict[str, Any]:
    """Every setting a starter may choose for a run of ``kind``, at its default value."""
    if kind == Kind.GENERATION:
        return dict(GENERATION_DEFAULTS)
    if kind not in _CLASSES:
        raise ValueError(f"kind must be one of {', '.join(Kind.values)}, not {kind!r}")
    defaults = {**_library_defaults(_CLASSES[kind]), **APP_DEFAULTS[kind]}
    if kind == Kind.REWARD_MODEL:
        defaults["backbone"] = settings.REWARD_BACKBONE
    return defaults


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _checked(kind: str, run_config: dict) -> dict[str, Any]:
    """The run's settings over the defaults; a setting the kind does not have is an error naming it."""
    if not isinstance(run_config, dict):
        raise ValueError("a run's config must be a JSON object of settings")
    defaults = run_defaults(kind)
    unknown = sorted(set(run_config) - set(defaults))
    if unknown:
        what = "reward-model" if kind == Kind.REWARD_MODEL else TrainingRun.Kind(kind).label
        raise ValueError(f"unknown {what} settings: {', '.join(map(str, unknown))}")
    infinite = sorted(name for name, value in run_config.items() if not _finite(value))
    if infinite:  # NaN and infinities: no setting means them, and JSON columns cannot store them
        raise ValueError(f"{', '.join(infinite)} must be a finite number")
    return {**defaults, **run_config}


def _accepts(hint, value) -> bool:
    """Whether a JSON ``value`` fits a library field's type hint (one level: the hints these configs use)."""
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(hint))
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_accepts(option, value) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) in (tuple, list):
        item = (typing.get_args(hint) or (object,))[0]
        return isinstance(value, (list, tuple)) and all(item is object or _accepts(item, v) for v in value)
    return True  # a hint these configs do not use: the dataclass has the last word


def _describe(hint) -> str:
    if hint is bool:
        return "true or false"
    if hint is int:
        return "a whole number"
    if hint is float:
        return "a number"
    if hint is str:
        return "text"
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (tuple, list):
        return f"a list of {_describe((typing.get_args(hint) or (str,))[0]).removeprefix('a ')}"
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    return str(hint)


def _typed(cls, values: dict) -> None:
    """A setting whose JSON type does not fit its field is an error naming the setting and what it takes."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and not _accepts(hint, value):
            raise ValueError(f"{name} must be {_describe(hint)}, not {json.dumps(value)[:80]}")


# The sensible range of each numeric setting, whichever kind has it: (lowest, highest, lowest excluded,
# highest excluded). The library configs check what their code needs (a batch of at least 1); these bound
# what no run means either (a negative learning rate, 10^15 epochs, a seed past 64 bits) and what would
# only exhaust a worker (a batch of 10^18, 10^12 new tokens). Checked after the types and the library's own
# checks, so a wrong type or a broken rule of the library is named first.
_OPEN, _CLOSED = True, False
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0, 1, _OPEN, _OPEN),
    "epochs": (0, 1000, _OPEN, _CLOSED),
    "steps": (1, 1_000_000, _CLOSED, _CLOSED),
    "max_steps": (1, 100_000_000, _CLOSED, _CLOSED),
    "ppo_epochs": (1, 100, _CLOSED, _CLOSED),
    **{name: (1, 65536, _CLOSED, _CLOSED) for name in (
        "batch_size", "mini_batch_size", "eval_batch_size", "reward_batch_size", "ref_batch_size")},
    "bucket_size": (0, 65536, _CLOSED, _CLOSED),
    "grad_accum": (1, 4096, _CLOSED, _CLOSED),
    "max_length": (1, 131072, _CLOSED, _CLOSED),
    "max_prompt_length": (1, 131072, _CLOSED, _CLOSED),
    "max_new_tokens": (1, 32768, _CLOSED, _CLOSED),
    "seed": (0, 2**63 - 1, _CLOSED, _CLOSED),
    "prompts": (1, 10_000_000, _CLOSED, _CLOSED),
    "warmup_ratio": (0, 1, _CLOSED, _CLOSED),
    "weight_decay": (0, 1, _CLOSED, _CLOSED),
    "max_grad_norm": (0, 10_000, _OPEN, _CLOSED),
    "margin_scale": (0, 1000, _CLOSED, _CLOSED),
    "ensemble_size": (1, 64, _CLOSED, _CLOSED),
    "eval_fraction": (0, 1, _CLOSED, _OPEN),
    "lora_r": (0, 1024, _CLOSED, _CLOSED),
    "lora_alpha": (1, 4096, _CLOSED, _CLOSED),
    "lora_dropout": (0, 1, _CLOSED, _OPEN),
    "num_threads": (0, 1024, _CLOSED, _CLOSED),
    "beta": (0, 100, _OPEN, _CLOSED),
    "label_smoothing": (0, 0.5, _CLOSED, _OPEN),
    "temperature": (0, 10, _CLOSED, _CLOSED),
    "top_p": (0, 1, _OPEN, _CLOSED),
    "kl_coef": (0, 100, _CLOSED, _CLOSED),
    "kl_target": (0, 10_000, _OPEN, _CLOSED),
    "kl_horizon": (1, 1_000_000_000, _CLOSED, _CLOSED),
    "gamma": (0, 1, _CLOSED, _CLOSED),
    "lam": (0, 1, _CLOSED, _CLOSED),
    "clip_range": (0, 10, _OPEN, _CLOSED),
    "clip_range_value": (0, 10_000, _OPEN, _CLOSED),
    "vf_coef": (0, 100, _CLOSED, _CLOSED),
}


def _range_text(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if low_open and high_open:
        return f"greater than {low} and less than {high}"
    if low_open:
        return f"greater than {low} and at most {high}"
    if high_open:
        return f"at least {low} and less than {high}"
    return f"from {low} to {high}"


def _in_ranges(values: dict) -> None:
    """A number outside its setting's range (``RANGES``) is an error naming the setting, the value and the range."""
    for name, value in values.items():
        if name not in RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # None where a setting allows it, or a wrong type: the type checks name those
        low, high, low_open, high_open = RANGES[name]
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise ValueError(f"{name} must be {_range_text(low, high, low_open, high_open)}, not {value!r}")


def _build(cls, values: dict, **inputs):
    _typed(cls, values)
    try:
        config = cls(**values, **inputs)
    except TypeError as error:  # e.g. a list where a number belongs
        raise ValueError(str(error)) from None
    _in_ranges(values)
    return config


def _library_values(kind: str, run_config: dict) -> dict[str, Any]:
    values = _checked(kind, run_config)
    for name in _APP_ONLY[kind]:
        values.pop(name)
    return values


def reward_config(run_config: dict) -> RewardConfig:
    return _build(RewardConfig, _library_values(Kind.REWARD_MODEL, run_config))


def dpo_config(run_config: dict, *, model: str) -> DPOConfig:
    return _build(DPOConfig, _library_values(Kind.DPO, run_config), model=model)


def ppo_config(run_config: dict, *, model: str, reward: str) -> PPOConfig:
    return _build(PPOConfig, _library_values(Kind.PPO, run_config), model=model, reward=reward)


def world_size(kind: str, run_config: dict) -> int:
    """How many processes run the job: the run's ``world_size``, else the worker's ``WORKER_WORLD_SIZE``."""
    value = _checked(kind, run_config).get("world_size")
    if value is None:
        return settings.WORKER_WORLD_SIZE
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
        raise ValueError(f"world_size must be a whole number from 1 to 64 (one process per GPU), or null, not {value!r}")
    return value


def _prompt_count(value) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"prompts must be a whole number of at least 1, or null for all of them, not {value!r}")
    return value


def ppo_prompt_limit(run_config: dict) -> int | None:
    """How many of the project's prompts a PPO run rolls out on (None: all of them)."""
    prompts = _prompt_count(_checked(Kind.PPO, run_config)["prompts"])
    _in_ranges({"prompts": prompts})
    return prompts


def generation_settings(run_config: dict) -> dict[str, Any]:
    """The generation settings of a run (prompts and sampling), defaults filled in and checked."""
    values = _checked(Kind.GENERATION, run_config)
    _prompt_count(values["prompts"])
    for key in SAMPLING_KEYS:
        whole = key in ("max_new_tokens", "seed", "batch_size")
        if isinstance(values[key], bool) or not isinstance(values[key], int if whole else (int, float)):
            raise ValueError(f"{key} must be a {'whole ' if whole else ''}number, not {values[key]!r}")
    if values["temperature"] < 0 or not 0 < values["top_p"] <= 1:
        raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
    if values["max_new_tokens"] < 1 or values["batch_size"] < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1")
    _in_ranges(values)
    return values


def validate(kind: str, run_config: dict) -> None:
    """Raise ValueError naming what is wrong with ``run_config`` for a run of ``kind``."""
    if kind == Kind.REWARD_MODEL:
        reward_config(run_config)
        world_size(kind, run_config)
    elif kind == Kind.DPO:
        dpo_config(run_config, model="unset")
        world_size(kind, run_config)
    elif kind == Kind.PPO:
        ppo_config(run_config, model="unset", reward="unset")
        ppo_prompt_limit(run_config)
        ranks = world_size(kind, run_config)
        values = _checked(kind, run_config)
        if ranks > 1 and (values["batch_size"] % ranks or values["mini_batch_size"] % ranks):
            raise ValueError(f"batch_size and mini_batch_size must be multiples of world_size ({ranks}): each "
                             "process takes an equal share of the rollouts and of every minibatch")
    elif kind == Kind.GENERATION:
        generation_settings(run_config)
    else:
        raise ValueError(f"kind must be one of {', '.join(Kind.values)}, not {kind!r}")
