"""Run settings out of their sensible range are refused with a message naming the setting, the value and
the range: a 400 from the API, nothing queued; the edges of each range still start."""
from __future__ import annotations

import pytest

from tests.training.test_starts import api_start, lineup  # noqa: F401  (the fixture)
from training import configs
from training.models import TrainingRun

Kind = TrainingRun.Kind

OUT_OF_RANGE = [
    (Kind.REWARD_MODEL, "learning_rate", -1, "learning_rate must be greater than 0 and less than 1, not -1"),
    (Kind.DPO, "learning_rate", 0, "learning_rate must be greater than 0 and less than 1, not 0"),
    (Kind.PPO, "learning_rate", 1.5, "learning_rate must be greater than 0 and less than 1, not 1.5"),
    (Kind.REWARD_MODEL, "epochs", 1e15, "epochs must be greater than 0 and at most 1000, not 1000000000000000.0"),
    (Kind.DPO, "epochs", 1001, "epochs must be greater than 0 and at most 1000, not 1001"),
    (Kind.REWARD_MODEL, "batch_size", 10**18, "batch_size must be from 1 to 65536, not 1000000000000000000"),
    (Kind.PPO, "batch_size", 65537, "batch_size must be from 1 to 65536, not 65537"),
    (Kind.GENERATION, "batch_size", 10**9, "batch_size must be from 1 to 65536"),
    (Kind.GENERATION, "max_new_tokens", 10**12, "max_new_tokens must be from 1 to 32768, not 1000000000000"),
    (Kind.PPO, "max_new_tokens", 32769, "max_new_tokens must be from 1 to 32768, not 32769"),
    (Kind.GENERATION, "seed", 2**80, f"seed must be from 0 to {2**63 - 1}, not {2**80}"),
    (Kind.DPO, "seed", -1, f"seed must be from 0 to {2**63 - 1}, not -1"),
    (Kind.REWARD_MODEL, "seed", 2**63, f"seed must be from 0 to {2**63 - 1}"),
    (Kind.DPO, "max_steps", 10**12, "max_steps must be from 1 to 100000000"),
    (Kind.PPO, "steps", 10**7, "steps must be from 1 to 1000000"),
    (Kind.PPO, "prompts", 10**9, "prompts must be from 1 to 10000000"),
    (Kind.GENERATION, "prompts", 10**9, "prompts must be from 1 to 10000000"),
    (Kind.GENERATION, "temperature", 1e6, "temperature must be from 0 to 10"),
    (Kind.DPO, "beta", 1e9, "beta must be greater than 0 and at most 100"),
    (Kind.REWARD_MODEL, "max_length", 10**9, "max_length must be from 1 to 131072"),
    (Kind.REWARD_MODEL, "ensemble_size", 1000, "ensemble_size must be from 1 to 64"),
    (Kind.REWARD_MODEL, "weight_decay", -0.1, "weight_decay must be from 0 to 1, not -0.1"),
    (Kind.DPO, "max_grad_norm", 0, "max_grad_norm must be greater than 0 and at most 10000"),
    (Kind.PPO, "kl_coef", -1, "kl_coef must be from 0 to 100"),
    (Kind.DPO, "grad_accum", 10**6, "grad_accum must be from 1 to 4096"),
]


@pytest.mark.parametrize(("kind", "name", "value", "message"), OUT_OF_RANGE)
def test_a_setting_out_of_its_range_is_refused_naming_it_the_value_and_the_range(db, kind, name, value, message):
    with pytest.raises(ValueError) as refused:
        configs.validate(kind, {name: value})
    assert message in str(refused.value)


def test_the_edges_of_each_range_are_accepted(db):
    for kind, config in [
        (Kind.REWARD_MODEL, {"epochs": 1000, "batch_size": 65536, "seed": 2**63 - 1, "learning_rate": 0.999}),
        (Kind.DPO, {"seed": 0, "max_steps": 1, "beta": 100, "learning_rate": 1e-9}),
        (Kind.PPO, {"max_new_tokens": 32768, "batch_size": 8, "mini_batch_size": 8, "prompts": 10_000_000}),
        (Kind.GENERATION, {"max_new_tokens": 32768, "seed": 2**63 - 1, "temperature": 0, "batch_size": 65536}),
    ]:
        configs.validate(kind, config)


def test_the_api_answers_a_setting_out_of_range_with_a_400_naming_it_and_queues_nothing(
        client, project, manager, lineup):  # noqa: F811
    before = TrainingRun.objects.count()
    for kind, name, value, message in OUT_OF_RANGE:
        body = {"kind": kind, "config": {name: value}}
        if kind == Kind.GENERATION:
            body.update(checkpoint="cand", rivals=["base"])
        response = api_start(client, manager, body)
        assert response.status_code == 400, (body, response.content)
        assert message in response.json()["error"], (body, response.json())
    assert TrainingRun.objects.count() == before
    # A wrong type is still named as such, not as a range.
    response = api_start(client, manager, {"kind": "reward_model", "config": {"epochs": "x"}})
    assert response.status_code == 400 and 'epochs must be a number, not "x"' in response.json()["error"]
