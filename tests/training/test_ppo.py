"""The pure PPO library: its maths against hand computations, and whole runs on a tiny random Llama.

No database: these tests never touch Django. Runs use 2-layer, 32-wide
models on a word-level vocabulary of ~130 tokens (tests/rewardmodel/test_lib_tiny.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.tiny import llama_config, llama_tokenizer, safetensors_dtypes, save_tiny_llama, save_tiny_llama_bf16
from training.lib.ppo import rule_reward, train_ppo
from training.lib.ppo_config import PPOConfig
from training.lib.ppo_core import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalized_rewards,
    masked_whiten,
)

PROMPTS = [[{"role": "user", "content": f"q{i} hello world"}] for i in range(16)]


# --- the maths -----------------------------------------------------------------------------------------------------


def test_gae_matches_a_hand_computed_example() -> None:
    # One row of three real tokens then padding; gamma = 0.9, lambda = 0.5.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the 5.0 sits on padding and must be ignored
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 + 0.9 * 0.0 - 0.4  # the episode ends after token 2: no bootstrap from V=9.0
    d1 = 0.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert advantages[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.4, 0.0])


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value() -> None:
    rewards = torch.tensor([[0.1, -0.2, 2.0], [0.3, 1.0, 0.0]])
    values = torch.tensor([[0.3, 0.7, -0.4], [0.2, 0.6, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = torch.tensor([[1.9, 1.8, 2.0], [1.3, 1.0, 0.0]])
    assert torch.allclose(returns, to_go)
    assert torch.allclose(advantages, (to_go - values) * mask)


def test_kl_penalty_on_every_token_and_score_on_the_last_real_one() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards, kl = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    assert kl.flatten().tolist() == pytest.approx([0.5, -1.0, 0.0, 1.0, 0.0, 0.0])
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.1, 2.0, -0.1 - 1.0, 0.0, 0.0])


def test_clipped_policy_loss_and_clip_fraction_equal_closed_forms() -> None:
    eps = 0.2
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.7, 2.0]])
    advantages = torch.tensor([[1.0, -2.0, 3.0, 1.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    old = torch.full_like(ratios, -1.0)
    result = clipped_policy_loss(old + ratios.log(), old, advantages, mask, clip_range=eps)
    # Per token max(-A r, -A clip(r)): 1.5 (A>0) clips at 1.2; 0.5 (A<0) clips at 0.8; 1.1 is inside; 0.7 (A>0)
    # is below the range, where the unclipped term is the larger one, so it is not clipped.
    per_token = [-1.0 * 1.2, 2.0 * 0.8, -3.0 * 1.1, -1.0 * 0.7]
    assert float(result.loss) == pytest.approx(sum(per_token) / 4)
    assert float(result.clip_fraction) == pytest.approx(2 / 4)
    expected_kl = sum(0.5 * math.log(r) ** 2 for r in (1.5, 0.5, 1.1, 0.7)) / 4
    assert float(result.approx_kl) == pytest.approx(expected_kl)


def test_clipped_policy_loss_gradient_vanishes_only_where_clipped() -> None:
    ratios = torch.tensor([[1.5, 1.1]])
    logprobs = ratios.log().requires_grad_(True)
    result = clipped_policy_loss(logprobs, torch.zeros_like(ratios), torch.ones_like(ratios), torch.ones_like(ratios))
    result.loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, -1.1 / 2])  # d(-r)/d(log r) = -r, averaged over 2


def test_clipped_value_loss_equals_closed_form() -> None:
    values = torch.tensor([[1.0, 0.0, 0.5]])
    old = torch.tensor([[0.5, 0.5, 0.5]])
    returns = torch.tensor([[0.0, 1.0, 2.0]])
    mask = torch.ones_like(values)
    result = clipped_value_loss(values, old, returns, mask, clip_range_value=0.2)
    # clipped values: 0.7, 0.3, 0.5 -> errors max((1-0)^2, 0.7^2)=1, max(1, 0.49)=1, max(2.25, 2.25)=2.25
    assert float(result.loss) == pytest.approx(0.5 * (1.0 + 1.0 + 2.25) / 3)
    assert float(result.clip_fraction) == pytest.approx(0.0)
    # A value that jumped onto its target beyond the clip range still pays the clipped error (0.2 - 1)^2.
    far = clipped_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1), 0.2)
    assert float(far.loss) == pytest.approx(0.5 * 0.8**2) and float(far.clip_fraction) == 1.0


def test_masked_whiten_ignores_padding() -> None:
    values = torch.tensor([[1.0, 3.0, 100.0]])
    out = masked_whiten(values, torch.tensor([[1.0, 1.0, 0.0]]))
    assert out[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_adaptive_kl_coefficient_moves_towards_the_target() -> None:
    assert adaptive_kl_coef(0.1, observed_kl=12.0, target=6.0, horizon=1000, n_steps=100) == pytest.approx(0.1 * 1.02)
    assert adaptive_kl_coef(0.1, observed_kl=1.0, target=6.0, horizon=1000, n_steps=100) == pytest.approx(0.1 * 0.98)
    assert adaptive_kl_coef(0.1, observed_kl=6.3, target=6.0, horizon=1000, n_steps=100) == pytest.approx(0.1 * 1.005)
    assert adaptive_kl_coef(0.1, observed_kl=float("nan"), target=6.0, horizon=1000, n_steps=100) == 0.1


def test_rule_reward_counts_words() -> None:
    assert rule_reward("rule:count:good")([[]] * 2, ["good dog good", "bad"]) == [2.0, 0.0]
    assert rule_reward("rule:length")([[]], ["a b c"]) == [3.0]
    with pytest.raises(ValueError):
        rule_reward("rule:nonsense")


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="mini_batch_size"):
        PPOConfig(model="x", batch_size=4, mini_batch_size=8)
    with pytest.raises(ValueError, match="temperature"):
        PPOConfig(model="x", temperature=0.0)


def test_the_ppo_module_still_exports_its_config() -> None:
    from training.lib.ppo import PPOConfig as exported  # what older callers import

    assert exported is PPOConfig


# --- whole runs -----------------------------------------------------------------------------------------------------


def _toy_config(policy: Path, **overrides: object) -> PPOConfig:
    settings: dict = dict(model=str(policy), reward="rule:count:good", learning_rate=1e-2, batch_size=16,
                          mini_batch_size=8, ppo_epochs=4, max_new_tokens=8, kl_coef=0.25, steps=20, seed=0,
                          device="cpu", num_threads=1)  # 1: the test machine's 2 cores are shared
    settings.update(overrides)
    return PPOConfig(**settings)


def test_ppo_raises_a_toy_reward_while_the_kl_stays_bounded(tmp_path: Path) -> None:
    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    steps: list[int] = []
    result = train_ppo(_toy_config(policy), PROMPTS, tmp_path / "out", lambda s, n, m: steps.append(s),
                       lineage={"parent_checkpoint": "tiny"})
    history = result.history
    assert steps == list(range(1, 21))
    for key in ("reward_mean", "kl", "entropy", "clip_fraction", "value_loss", "response_length", "kl_coef"):
        assert all(math.isfinite(entry[key]) for entry in history), key
    # "good" is 1 of ~130 words: a random policy writes ~0.06 of them in 8 tokens. The KL-regularised optimum
    # pi_ref * exp(r / 0.25) writes ~2.4 at ~6.7 nats of KL; collapsing onto "good" would cost ~37 nats.
    start = sum(e["reward_mean"] for e in history[:3]) / 3
    end = sum(e["reward_mean"] for e in history[-5:]) / 5
    assert start < 0.4
    assert end > 0.45 and end > start + 0.35  # seeds 0-5 end at 0.6-1.6
    assert max(e["kl"] for e in history) < 15.0
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # the first rollout is sampled from the reference


def test_saved_policy_loads_and_carries_lineage(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    config = _toy_config(policy, steps=2, ppo_epochs=1)
    result = train_ppo(config, PROMPTS[:4], tmp_path / "out", lineage={"run": 7})
    out = Path(result.out_dir)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "ppo" and meta["lineage"] == {"run": 7} and meta["config"] == config.to_dict()
    assert len(meta["history"]) == 2 and meta["metrics"]["steps"] == 2
    assert AutoTokenizer.from_pretrained(out).chat_template
    loaded = AutoModelForCausalLM.from_pretrained(out)
    start = AutoModelForCausalLM.from_pretrained(policy)
    assert any(not torch.equal(a, b) for a, b in zip(loaded.parameters(), start.parameters(), strict=True))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left behind
    with pytest.raises(FileExistsError):
        train_ppo(config, PROMPTS[:4], out)


def test_lora_run_against_a_reward_model_folder(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaModel

    from rewardmodel.lib.model import RewardModel, save_reward_model

    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    tok = llama_tokenizer(chat=True)
    torch.manual_seed(1)
    save_reward_model(RewardModel(LlamaModel(llama_config(tok)), tok, pooling="last"), tmp_path / "rm", {})
    config = _toy_config(policy, reward=str(tmp_path / "rm"), steps=2, ppo_epochs=1, lora_r=4, adaptive_kl=True,
                         kl_target=0.01, kl_horizon=100)
    result = train_ppo(config, PROMPTS[:8], tmp_path / "out")
    assert all(math.isfinite(e["reward_mean"]) for e in result.history)
    assert result.history[1]["kl_coef"] != config.kl_coef  # the controller acted after step 1
    merged = AutoModelForCausalLM.from_pretrained(result.out_dir)  # adapters merged: a plain causal LM
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_command_line_runs_on_a_jsonl_of_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.lib.generation import read_prompts
    from training.lib.ppo_cli import main

    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    lines = [json.dumps({"messages": PROMPTS[0]}), json.dumps({"prompt": "q3 hello"}), json.dumps(PROMPTS[2]), ""]
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines))
    assert read_prompts(tmp_path / "prompts.jsonl")[1] == [{"role": "user", "content": "q3 hello"}]
    code = main(["--model", str(policy), "--reward-model", "rule:count:good", "--prompts",
                 str(tmp_path / "prompts.jsonl"), "--out", str(tmp_path / "out"), "--steps", "1", "--batch-size", "3",
                 "--mini-batch-size", "3", "--ppo-epochs", "1", "--max-new-tokens", "4", "--device", "cpu",
                 "--num-threads", "1", "--no-whiten-advantages", "--lineage", '{"run": 1}'])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1.0
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["lineage"] == {"run": 1}


@pytest.mark.parametrize(("weights", "lora_r"), [("auto", 0), ("checkpoint", 0), ("checkpoint", 4)])
def test_a_bf16_base_gives_a_bf16_policy_that_reloads(tmp_path: Path, weights: str, lora_r: int) -> None:
    """On the CPU "auto" trains fp32 weights, "checkpoint" bf16 ones (and a bf16 reward model); both save bf16."""
    from transformers import AutoModelForCausalLM, LlamaModel

    from rewardmodel.lib.model import RewardModel, save_reward_model

    policy = save_tiny_llama_bf16(tmp_path / "policy", chat=True)
    tok = llama_tokenizer(chat=True)
    torch.manual_seed(1)
    reward_model = RewardModel(LlamaModel(llama_config(tok)).to(torch.bfloat16), tok, pooling="last")
    save_reward_model(reward_model, tmp_path / "rm", {})
    config = _toy_config(policy, reward=str(tmp_path / "rm"), steps=1, ppo_epochs=1, batch_size=4,
                         mini_batch_size=4, max_new_tokens=4, weights=weights, lora_r=lora_r)
    result = train_ppo(config, PROMPTS[:4], tmp_path / "out")
    assert all(math.isfinite(v) for v in result.history[0].values())
    out = Path(result.out_dir)
    meta = json.loads((out / "meta.json").read_text())
    trained = "bfloat16" if weights == "checkpoint" else "float32"
    assert meta["dtype"] == "bfloat16" and meta["weights"] == ("merged" if lora_r else "full")
    assert meta["precision"] == {"base": "bfloat16", "weights": trained, "autocast": None}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert safetensors_dtypes(out) == {"BF16"}
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == torch.bfloat16 and not any("lora" in n for n, _ in loaded.named_parameters())
    start = AutoModelForCausalLM.from_pretrained(policy)
    assert any(not torch.equal(a, b) for a, b in zip(loaded.parameters(), start.parameters(), strict=True))


def test_an_fp32_base_gives_an_fp32_policy(tmp_path: Path) -> None:
    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    config = _toy_config(policy, steps=1, ppo_epochs=1, batch_size=4, mini_batch_size=4, max_new_tokens=4,
                         weights="checkpoint")
    out = Path(train_ppo(config, PROMPTS[:4], tmp_path / "out").out_dir)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((out / "meta.json").read_text())["dtype"] == "float32"
    assert safetensors_dtypes(out) == {"F32"}


def test_gradient_checkpointing_recomputes_layers_and_changes_no_number(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.modeling_utils as modeling_utils  # gradient_checkpointing_enable binds its `checkpoint`

    policy = save_tiny_llama(tmp_path / "policy", chat=True)
    runs = {}
    real = modeling_utils.checkpoint
    calls: list[int] = []
    monkeypatch.setattr(modeling_utils, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    for checkpointing in (False, True):
        calls.clear()
        config = _toy_config(policy, reward="rule:length", steps=2, ppo_epochs=2, batch_size=4, mini_batch_size=2,
                             max_new_tokens=4, gradient_checkpointing=checkpointing)
        history = train_ppo(config, PROMPTS[:8], tmp_path / f"out-{checkpointing}").history
        runs[checkpointing] = [{k: v for k, v in e.items() if "per_s" not in k and k != "elapsed_s"} for e in history]
        assert bool(calls) == checkpointing
    assert len(runs[True]) == len(runs[False]) == 2
    for with_checkpointing, without in zip(runs[True], runs[False], strict=True):
        assert with_checkpointing == pytest.approx(without, rel=1e-5, abs=1e-6)
