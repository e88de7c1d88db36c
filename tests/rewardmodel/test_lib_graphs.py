"""CUDA-graphed training steps: the fixed layout they need (checked on the CPU), and the graphs
themselves (checked where a CUDA GPU is present; on the CPU those tests are skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.data import PairCollator, StaticLayout
from rewardmodel.lib.losses import bradley_terry_loss
from rewardmodel.lib.model import RewardModel, build_reward_model, split_pair_rewards
from rewardmodel.lib.runtime import resolve_cuda_graphs
from rewardmodel.lib.train import train_reward_model
from tests.tiny import counting_pairs, save_tiny_bert, save_tiny_llama

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def _config(backbone: Path, **overrides: object) -> RewardConfig:
    base = dict(backbone=str(backbone), learning_rate=3e-3, epochs=2, batch_size=8, eval_fraction=0.25,
                warmup_ratio=0.1, num_threads=1)
    return RewardConfig(**{**base, **overrides})


def _mixed_pairs(model, n: int = 8):
    short = counting_pairs(n // 2, 2, noise=0.0, seed=2, length=3)
    long = counting_pairs(n // 2, 2, noise=0.0, seed=3, length=11)
    return model.formatter.encode(short + long, 64)


@pytest.mark.parametrize(("kind", "pooling", "shared"), [("llama", "last", True), ("llama", "last", False),
                                                         ("bert", "cls", False)])
def test_static_layout_gives_the_same_rewards_as_the_tight_one(tmp_path: Path, kind: str, pooling: str,
                                                               shared: bool) -> None:
    backbone = (save_tiny_llama if kind == "llama" else save_tiny_bert)(tmp_path / kind)
    model = build_reward_model(_config(backbone, pooling=pooling)).eval()
    pairs = _mixed_pairs(model)
    tight = PairCollator(model.pad_id, shared_prefix=shared, pack=True, causal=model.causal)
    longest = max(len(u.ids) for u in tight.units(pairs))
    layout = StaticLayout(width=longest + 13, row_quantum=5)  # wider rows, and whole empty rows appended
    fixed = PairCollator(model.pad_id, shared_prefix=shared, pack=True, causal=model.causal, layout=layout)
    a, b = tight(pairs), fixed(pairs)
    assert b.input_ids.shape[1] == layout.width and b.input_ids.shape[0] % 5 == 0
    assert b.input_ids.shape[0] > a.input_ids.shape[0] or b.input_ids.shape[1] > a.input_ids.shape[1]
    assert b.attention_mask.dim() == 4 and b.position_ids is not None  # a block mask always, for a fixed input set
    model.flat_tokens = False
    with torch.no_grad():
        for got, want in zip(split_pair_rewards(model, b), split_pair_rewards(model, a), strict=True):
            assert torch.allclose(got, want, atol=1e-5)


def test_static_layout_plan_takes_a_few_shapes_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    model = build_reward_model(_config(save_tiny_llama(tmp_path / "llama")))
    collate = PairCollator(model.pad_id, shared_prefix=True, pack=True, causal=True)
    encoded = model.formatter.encode(counting_pairs(40, 2, noise=0.0, seed=4, length=9), 64)
    batches = [collate.units(encoded[i: i + 8]) for i in range(0, len(encoded), 8)]
    layout = StaticLayout.plan(batches)
    longest = max(len(u.ids) for units in batches for u in units)
    assert layout.width % 64 == 0 and longest <= layout.width < longest + 64
    fixed = PairCollator(model.pad_id, shared_prefix=True, pack=True, causal=True, layout=layout)
    shapes = {tuple(fixed(encoded[i: i + 8]).input_ids.shape) for i in range(0, len(encoded), 8)}
    assert 1 <= len(shapes) <= 4
    with pytest.raises(ValueError, match="does not fit rows of 8"):
        StaticLayout(width=8).rows(batches[0])


def test_cuda_graphs_resolve_per_device_and_name_what_stops_them() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = RewardConfig(backbone="x")
    assert resolve_cuda_graphs(auto, cuda, packed=True, pooling="last")
    assert not resolve_cuda_graphs(auto, cpu, packed=True, pooling="last")
    assert not resolve_cuda_graphs(auto, cuda, packed=True, pooling="mean")
    assert not resolve_cuda_graphs(RewardConfig(backbone="x", cuda_graphs="off"), cuda, packed=True, pooling="last")
    with pytest.raises(ValueError, match="a CUDA device"):
        resolve_cuda_graphs(RewardConfig(backbone="x", cuda_graphs="on"), cpu, packed=True, pooling="last")
    with pytest.raises(ValueError, match="grad_accum=1.*compile off"):
        resolve_cuda_graphs(RewardConfig(backbone="x", cuda_graphs="on", grad_accum=2, compile="on"), cuda,
                            packed=True, pooling="cls")
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        RewardConfig(backbone="x", cuda_graphs="yes")


def test_on_the_cpu_training_runs_without_graphs(tmp_path: Path) -> None:
    result = train_reward_model(_config(save_tiny_llama(tmp_path / "llama"), device="cpu"),
                                counting_pairs(12, 2, noise=0.0, seed=1), tmp_path / "out")
    assert result.metrics["cuda_graphs"] == 0.0 and result.metrics["cuda_graph_shapes"] == 0.0


@needs_cuda
@pytest.mark.parametrize(("kind", "pooling", "ensemble"), [("llama", "last", 1), ("llama", "last", 3),
                                                           ("bert", "cls", 1)])
def test_graphed_training_matches_eager_training(tmp_path: Path, kind: str, pooling: str, ensemble: int) -> None:
    backbone = (save_tiny_llama if kind == "llama" else save_tiny_bert)(tmp_path / kind)
    pairs = counting_pairs(30, 3, noise=0.1, seed=5) + counting_pairs(10, 3, noise=0.1, seed=6, length=15)
    runs = {}
    for graphs in ("on", "off"):
        config = _config(backbone, pooling=pooling, device="cuda", dtype="fp32", cuda_graphs=graphs,
                         ensemble_size=ensemble, epochs=3)
        runs[graphs] = train_reward_model(config, pairs, tmp_path / graphs)
    on, off = runs["on"], runs["off"]
    assert on.metrics["cuda_graphs"] == 1.0 and 1 <= on.metrics["cuda_graph_shapes"] <= 4
    assert off.metrics["cuda_graphs"] == 0.0
    assert len(on.history) == len(off.history) == on.metrics["optimizer_steps"]
    for a, b in zip(on.history, off.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4)
        assert a["lr"] == pytest.approx(b["lr"])
    assert on.history[-1]["loss"] < on.history[0]["loss"]
    assert on.metrics["eval_accuracy"] == pytest.approx(off.metrics["eval_accuracy"], abs=0.05)


@needs_cuda
def test_graphed_bf16_training_learns(tmp_path: Path) -> None:
    pairs = counting_pairs(40, 3, noise=0.1, seed=7)
    config = _config(save_tiny_llama(tmp_path / "llama"), device="cuda", dtype="bf16", cuda_graphs="on", epochs=4)
    result = train_reward_model(config, pairs, tmp_path / "out")
    assert result.metrics["cuda_graphs"] == 1.0
    assert result.metrics["eval_accuracy"] >= 0.75, result.metrics


def _loss_and_grads(model: RewardModel, pairs, device: torch.device) -> tuple[float, dict[str, torch.Tensor]]:
    """One packed batch's BT loss and every weight gradient, computed on `device` (strict fp32)."""
    model = model.to(device)
    model.zero_grad(set_to_none=True)
    collate = PairCollator(model.pad_id, shared_prefix=model.supports_prefix_sharing(), pack=True,
                           causal=model.causal, mask_device=device)
    chosen, rejected = split_pair_rewards(model, collate(pairs).to(device))
    loss = bradley_terry_loss(chosen.float(), rejected.float())
    loss.backward()
    grads = {name: p.grad.detach().cpu() for name, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@needs_cuda
@pytest.mark.parametrize(("kind", "shortcut"), [("minilm", True), ("minilm", False), ("llama", False)])
def test_a_gpu_step_computes_the_cpu_step(tmp_path: Path, kind: str, shortcut: bool) -> None:
    """The GPU kernels (attention under block masks, the [CLS]-only final layer) give the CPU's
    loss and gradients, at MiniLM's width and head count and with long packed sequences."""
    if kind == "minilm":
        backbone = save_tiny_bert(tmp_path / kind, hidden_size=384, intermediate_size=1536, num_attention_heads=12)
    else:
        backbone = save_tiny_llama(tmp_path / kind)
    model = build_reward_model(_config(backbone))
    model.final_layer_shortcut = shortcut and model.final_layer_shortcut
    pairs = model.formatter.encode(counting_pairs(4, 2, noise=0.0, seed=8, length=60)
                                   + counting_pairs(4, 2, noise=0.0, seed=9, length=150), 512)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cpu_loss, cpu_grads = _loss_and_grads(model, pairs, torch.device("cpu"))
        gpu_loss, gpu_grads = _loss_and_grads(model, pairs, torch.device("cuda"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    assert cpu_grads.keys() == gpu_grads.keys()
    # Gradients that are zero in exact arithmetic (a key bias: softmax ignores it) are float noise
    # on both sides; they are held to a bound relative to the largest gradient instead.
    largest = max(float(g.abs().max()) for g in cpu_grads.values())
    for name, want in cpu_grads.items():
        error = float((gpu_grads[name] - want).abs().max())
        assert error <= 1e-3 * float(want.abs().max()) + 1e-6 * largest, name
