"""Training, evaluation, truncation, saving and scoring on tiny random backbones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rewardmodel.lib.__main__ import main
from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.data import PairCollator, PairFormatter, PreferencePair
from rewardmodel.lib.evaluate import predict_pair_rewards
from rewardmodel.lib.model import RewardModel, build_reward_model, load_reward_model
from rewardmodel.lib.runtime import resolve_flat_tokens
from rewardmodel.lib.score import score, score_with_uncertainty
from rewardmodel.lib.train import train_reward_model
from tests.tiny import counting_pairs, llama_tokenizer, save_tiny_bert, save_tiny_llama


def _config(backbone: Path, **overrides: object) -> RewardConfig:
    # One thread: the tiny models are launch-bound, and extra threads only contend.
    base = dict(backbone=str(backbone), learning_rate=3e-3, epochs=3, batch_size=16, eval_fraction=0.25,
                warmup_ratio=0.1, num_threads=1)
    return RewardConfig(**{**base, **overrides})


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_learns_hidden_rule_up_to_the_noise_ceiling(tmp_path: Path, pooling: str) -> None:
    noise = 0.1
    pairs = counting_pairs(200, 4, noise=noise, seed=0)
    config = _config(save_tiny_bert(tmp_path / "bert"), pooling=pooling)
    result = train_reward_model(config, pairs, tmp_path / "out")
    m = result.metrics
    assert m["eval_accuracy"] >= (1 - noise) - 0.08, m
    assert m["eval_agreement_mean"] == pytest.approx(1 - noise)
    assert m["eval_accuracy_vs_agreement"] == pytest.approx(m["eval_accuracy_with_agreement"] / (1 - noise))
    assert m["eval_accuracy_strength_3"] >= m["eval_accuracy_strength_1"] - 0.05  # easy pairs are not harder
    assert m["padding_fraction"] < 0.2 and m["truncated_pairs"] == 0
    assert len(result.history) == m["optimizer_steps"] and result.history[-1]["loss"] < result.history[0]["loss"]


@pytest.mark.parametrize(("kind", "pooling"), [("bert", "cls"), ("bert", "mean"), ("llama", "last")])
def test_packed_and_shared_layouts_give_the_same_rewards(tmp_path: Path, kind: str, pooling: str) -> None:
    backbone = (save_tiny_bert if kind == "bert" else save_tiny_llama)(tmp_path / kind)
    model = build_reward_model(_config(backbone, pooling=pooling))
    assert model.supports_packing() and model.supports_prefix_sharing() == (kind == "llama")
    encoded = model.formatter.encode(counting_pairs(6, 3, noise=0.0, seed=2, length=3) + counting_pairs(
        6, 3, noise=0.0, seed=3, length=9), 64)  # mixed lengths, so packing has gaps to fill
    plain = predict_pair_rewards(model, encoded, batch_size=8)
    if model.final_layer_shortcut:  # BERT + [CLS]: the final layer at [CLS] alone is the same function
        model.final_layer_shortcut = False
        full = predict_pair_rewards(model, encoded, batch_size=8)
        model.final_layer_shortcut = True
        assert torch.allclose(plain[0], full[0], atol=1e-5) and torch.allclose(plain[1], full[1], atol=1e-5)
        assert len(model.backbone.encoder.layer) == 2  # the layer is back after the shortcut
    assert model.final_layer_shortcut == (pooling == "cls")
    layouts = [(False, True)] + ([(True, False), (True, True)] if kind == "llama" else [])
    for shared, pack in layouts:
        other = predict_pair_rewards(model, encoded, batch_size=8, shared_prefix=shared, pack=pack)
        assert torch.allclose(plain[0], other[0], atol=1e-5) and torch.allclose(plain[1], other[1], atol=1e-5)


@pytest.mark.parametrize(("kind", "pooling"), [("llama", "last"), ("bert", "cls"), ("bert", "mean")])
def test_flat_tokens_give_the_same_rewards_and_gradients(tmp_path: Path, kind: str, pooling: str) -> None:
    # A packed backbone runs its per-token layers on the real tokens alone, laid out flat; only
    # attention sees the padded rows. Rewards and every weight gradient must match the padded run
    # (BERT with [CLS] pooling: its final layer at the [CLS] positions alone, in both runs).
    backbone = (save_tiny_llama if kind == "llama" else save_tiny_bert)(tmp_path / kind)
    model = build_reward_model(_config(backbone, pooling=pooling))
    assert model.flat_tokens and model.final_layer_shortcut == (pooling == "cls")
    encoded = model.formatter.encode(counting_pairs(6, 3, noise=0.0, seed=2, length=3) + counting_pairs(
        6, 3, noise=0.0, seed=3, length=9), 64)
    batch = PairCollator(model.pad_id, shared_prefix=kind == "llama", pack=True, causal=model.causal)(encoded)
    assert batch.token_index.numel() == batch.computed_tokens < batch.padded_tokens  # there is padding to skip

    shapes: list[tuple[int, ...]] = []
    embed = model.backbone.embed_tokens if kind == "llama" else model.backbone.embeddings.word_embeddings
    embed.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))

    def run(flat: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.flat_tokens = flat
        model.zero_grad(set_to_none=True)
        chosen, rejected = model.pair_rewards(batch)
        (chosen - rejected).sigmoid().log().sum().neg().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return torch.cat([chosen, rejected]).detach(), grads

    (flat, flat_grads), (padded, padded_grads) = run(True), run(False)
    assert shapes == [(1, batch.computed_tokens), tuple(batch.input_ids.shape)]
    assert torch.allclose(flat, padded, atol=1e-5)
    unused = 1 + (2 if pooling == "mean" else 0)  # the tie parameter; mean pooling skips BERT's pooler
    assert len(flat_grads) == len(padded_grads) == sum(1 for p in model.parameters() if p.requires_grad) - unused
    for a, b in zip(flat_grads, padded_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    if kind != "llama":
        return
    model.flat_tokens = True
    result = train_reward_model(_config(save_tiny_llama(tmp_path / "llama2"), epochs=1),
                                counting_pairs(24, 3, noise=0.0, seed=1), tmp_path / "out")
    assert result.metrics["flat_tokens"] == 1.0  # "auto" on the CPU
    assert "_attn_implementation" not in (tmp_path / "out" / "config.json").read_text()
    assert load_reward_model(tmp_path / "out").flat_tokens  # a saved model loads and runs flat again


def test_flat_tokens_are_on_for_the_cpu_only_unless_asked(tmp_path: Path) -> None:
    for setting, on_cpu, on_cuda in (("auto", True, False), ("on", True, True), ("off", False, False)):
        config = RewardConfig(backbone="unused", flat_tokens=setting)
        assert resolve_flat_tokens(config, torch.device("cpu")) is on_cpu
        assert resolve_flat_tokens(config, torch.device("cuda")) is on_cuda
    with pytest.raises(ValueError, match="flat_tokens"):
        RewardConfig(backbone="unused", flat_tokens="yes")
    result = train_reward_model(_config(save_tiny_llama(tmp_path / "llama"), epochs=1, flat_tokens="off"),
                                counting_pairs(24, 3, noise=0.0, seed=1), tmp_path / "out")
    assert result.metrics["flat_tokens"] == 0.0 and result.metrics["prefix_sharing"] == 1.0


def test_causal_backbone_with_shared_prefix_learns(tmp_path: Path) -> None:
    backbone = save_tiny_llama(tmp_path / "llama")
    result = train_reward_model(_config(backbone), counting_pairs(200, 4, noise=0.1, seed=0), tmp_path / "out")
    m = result.metrics
    assert m["prefix_sharing"] == 1.0 and m["packing"] == 1.0 and m["eval_accuracy"] >= 0.8, m


@pytest.mark.parametrize("loss", ["davidson", "rao_kupper"])
def test_tie_aware_loss_learns_from_ties(tmp_path: Path, loss: str) -> None:
    pairs = counting_pairs(200, 4, noise=0.1, seed=0, ties=True)
    assert sum(p.tie for p in pairs) > 50
    result = train_reward_model(_config(save_tiny_bert(tmp_path / "bert"), loss=loss), pairs, tmp_path / "out")
    m = result.metrics
    assert m["train_ties_skipped"] == 0 and "tie_param" in m
    assert m["eval_tie_prob_on_ties"] > m["eval_tie_prob_on_nonties"], m
    assert m["eval_accuracy"] >= 0.8, m


@pytest.mark.parametrize("loss", ["bt", "bt_margin"])
def test_bt_loss_skips_ties_and_refuses_only_ties(tmp_path: Path, loss: str) -> None:
    """Tie pairs add nothing to a Bradley–Terry run: with ties mixed in it trains step for step, weight for weight,
    as without them. A snapshot of only ties leaves nothing to train on and is refused."""
    backbone = save_tiny_bert(tmp_path / "bert")
    strict = counting_pairs(12, 2, noise=0.0, seed=0)
    mixed: list[PreferencePair] = []
    for i, pair in enumerate(strict):  # a tie (texts swapped, so BT would push the other way) after every third pair
        mixed.append(pair)
        if i % 3 == 0:
            mixed.append(dataclasses.replace(pair, chosen=pair.rejected, rejected=pair.chosen, tie=True, strength=None))
    ties = len(mixed) - len(strict)
    config = _config(backbone, loss=loss, epochs=2, eval_fraction=0.0)

    plain = train_reward_model(config, strict, tmp_path / "plain")
    with_ties = train_reward_model(config, mixed, tmp_path / "with-ties")

    assert (plain.metrics["train_ties_skipped"], with_ties.metrics["train_ties_skipped"]) == (0, ties)
    assert with_ties.metrics["train_pairs"] == plain.metrics["train_pairs"] == len(strict)
    learned = ("loss", "accuracy", "grad_norm", "lr", "pairs_seen", "tokens_seen")
    assert [[step[k] for k in learned] for step in with_ties.history] == \
        [[step[k] for k in learned] for step in plain.history]
    plain_weights = load_reward_model(tmp_path / "plain").state_dict()
    tie_weights = load_reward_model(tmp_path / "with-ties").state_dict()
    assert all(torch.equal(plain_weights[name], tie_weights[name]) for name in plain_weights)

    only_ties = [PreferencePair(prompt=f"q{i}", chosen="good", rejected="bad", tie=True, prompt_id=i) for i in range(8)]
    with pytest.raises(ValueError, match="no trainable pairs"):
        train_reward_model(config, only_ties, tmp_path / "only-ties")
    assert not (tmp_path / "only-ties").exists()


def test_left_truncation_keeps_the_response(tmp_path: Path) -> None:
    tok = llama_tokenizer()
    prompt = " ".join(f"q{i}" for i in range(60))
    pair = PreferencePair(prompt=prompt, chosen="good good yes", rejected="no")
    enc = PairFormatter(tok, causal=True).encode([pair], max_length=16)[0]
    assert enc.prompt_truncated and not enc.response_truncated
    assert len(enc.prompt_ids) + len(enc.chosen_ids) == 16
    assert tok.convert_ids_to_tokens(enc.chosen_ids) == ["good", "good", "yes", "</s>"]
    assert tok.convert_ids_to_tokens(enc.prompt_ids) == ["<s>"] + [f"q{i}" for i in range(49, 60)]
    # A response longer than the limit keeps its opening and its final token; the pair survives.
    long = PreferencePair(prompt="hello", chosen=" ".join(["yes"] * 40), rejected="no")
    enc = PairFormatter(tok, causal=True).encode([long], max_length=16)[0]
    assert enc.response_truncated and len(enc.prompt_ids) + len(enc.chosen_ids) <= 16
    assert enc.chosen_ids[-1] == tok.eos_token_id

    pairs = [PreferencePair(prompt=prompt, chosen="good", rejected="bad", prompt_id=i) for i in range(12)]
    result = train_reward_model(_config(save_tiny_llama(tmp_path / "llama"), max_length=16, epochs=1),
                                pairs, tmp_path / "out")
    assert result.metrics["truncated_pairs"] == 12 and result.metrics["train_pairs"] + 3 == 12


def test_save_load_score_round_trip(tmp_path: Path) -> None:
    pairs = counting_pairs(40, 2, noise=0.0, seed=1)
    config = _config(save_tiny_bert(tmp_path / "bert"), epochs=1, ensemble_size=3)
    result = train_reward_model(config, pairs, tmp_path / "out", snapshot_sha256="abc123")
    meta = json.loads(Path(result.meta_path).read_text())
    assert meta["snapshot_sha256"] == "abc123" and meta["config"]["ensemble_size"] == 3
    assert meta["code_version"] and meta["metrics"]["eval_accuracy"] == result.metrics["eval_accuracy"]
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "README.md").exists()

    loaded = load_reward_model(tmp_path / "out")
    prompts, completions = [p.prompt for p in pairs], [p.chosen for p in pairs]
    rewards = score(loaded, prompts, completions, batch_size=7)
    # Score one at a time with a second independent load: batching and padding must not matter.
    again = load_reward_model(tmp_path / "out")
    single = [score(again, [p], [c])[0] for p, c in zip(prompts[:5], completions[:5], strict=True)]
    assert rewards[:5] == pytest.approx(single, abs=1e-5)
    means, stds = score_with_uncertainty(loaded, prompts, completions)
    assert means == pytest.approx(rewards, abs=1e-6) and min(stds) > 0


def test_model_rewards_match_a_manual_forward(tmp_path: Path) -> None:
    model = build_reward_model(_config(save_tiny_llama(tmp_path / "llama")))
    assert isinstance(model, RewardModel) and model.pooling == "last"
    enc = model.formatter.encode([PreferencePair(prompt="hello", chosen="yes", rejected="no no")], 32)
    batch = PairCollator(model.pad_id)(enc)
    with torch.no_grad():
        chosen, _ = model.pair_rewards(batch)
        ids = torch.tensor([enc[0].prompt_ids + enc[0].chosen_ids])
        hidden = model.backbone(input_ids=ids).last_hidden_state[0, -1]
    assert torch.allclose(chosen[0, 0], model.head(hidden)[0], atol=1e-6)


def test_command_line_trains_and_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt_id": p.prompt_id, "prompt": [{"role": "user", "content": p.prompt}], "chosen": p.chosen,
             "rejected": p.rejected, "tie": p.tie, "strength": p.strength} for p in counting_pairs(30, 2, noise=0, seed=4)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    backbone = save_tiny_bert(tmp_path / "bert")
    out = tmp_path / "rm"
    assert main(["train", "--data", str(data), "--backbone", str(backbone), "--out", str(out), "--loss",
                 "bt_margin", "--epochs", "1", "--batch-size", "8", "--num-threads", "1"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["train_pairs"] > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["loss"] == "bt_margin" and len(meta["snapshot_sha256"]) == 64
    assert main(["score", "--model", str(out), "--data", str(data)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(rows)
