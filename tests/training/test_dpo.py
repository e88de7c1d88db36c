"""The pure DPO library: TRL parity, learning, reference handling, LoRA, checkpoints, losses."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from rewardmodel.lib.data import PreferencePair
from tests.tiny import llama_config, llama_tokenizer, safetensors_dtypes, save_tiny_llama, save_tiny_llama_bf16
from training.lib import checkpoint as checkpoint_module
from training.lib.checkpoint import load_checkpoint
from training.lib.dpo import DPOConfig, batch_loss, resolve_autocast, train_dpo
from training.lib.dpo_data import DPOCollator, encode_pairs, fit_lengths
from training.lib.dpo_losses import dpo_loss, ipo_loss, robust_loss, sigmoid_loss
from training.lib.logprobs import rows_to_scored_tokens, sequence_sums, token_logprobs

ROWS = [
    {"prompt": "hello world", "chosen": "good good yes", "rejected": "bad"},
    {"prompt": "the cat is", "chosen": "very good", "rejected": "not good and bad bad"},
    {"prompt": "q1 q2 q3 q4 q5", "chosen": "yes", "rejected": "no"},
    {"prompt": "it was", "chosen": "a dog and a cat", "rejected": "maybe"},
]


def _pair(row: dict[str, str]) -> PreferencePair:
    return PreferencePair(prompt=[{"role": "user", "content": row["prompt"]}], chosen=row["chosen"],
                          rejected=row["rejected"])


def toy_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """The chosen response always ends in "good", the rejected one in "bad"."""
    rng = random.Random(seed)
    fill = "the cat dog is was very and it".split()

    def words(k: int) -> str:
        return " ".join(rng.choice(fill) for _ in range(k))

    return [PreferencePair(prompt=[{"role": "user", "content": words(rng.randint(2, 8))}],
                           chosen=words(rng.randint(1, 5)) + " good", rejected=words(rng.randint(1, 5)) + " bad",
                           prompt_id=i) for i in range(n)]


@pytest.fixture(autouse=True)
def one_thread() -> object:
    # Tiny models on a shared 2-core machine: a second thread only adds spin-waiting (about 15x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", chat=True)


def _seq_logps(model: torch.nn.Module, batch: object) -> torch.Tensor:
    tokens = batch.tokens  # type: ignore[attr-defined]
    return sequence_sums(token_logprobs(model, tokens), tokens.seq_index, tokens.num_seqs)


def test_sigmoid_loss_matches_trl_dpo_trainer(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    tok = llama_tokenizer(chat=True)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(llama_config(tok))
    torch.manual_seed(1)  # a different reference, so that the loss is not trivially log 2
    reference = LlamaForCausalLM(llama_config(tok))
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in ROWS]
    trainer = DPOTrainer(
        model=policy, ref_model=reference, processing_class=tok, train_dataset=datasets.Dataset.from_list(rows),
        args=TRLConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", beta=0.5,
                       per_device_train_batch_size=len(rows), max_length=None),
    )
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    trl_ids = trl_batch["input_ids"].clone()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, trl_batch))

    examples, _ = encode_pairs(tok, [_pair(r) for r in ROWS], max_length=1024, max_prompt_length=512)
    config = DPOConfig(model="unused", beta=0.5)
    for shared in (False, True):
        batch = DPOCollator(tok.pad_token_id, shared_prefix=shared)(examples)
        if not shared:
            assert torch.equal(batch.tokens.input_ids, trl_ids)  # the very same token ids
        with torch.no_grad():
            policy_tok = token_logprobs(policy, batch.tokens)
            ref_tok = token_logprobs(reference, batch.tokens)
            loss, _ = batch_loss(policy_tok, ref_tok, batch, config)
        assert abs(float(loss) - math.log(2)) > 1e-3  # a non-trivial value
        assert float(loss) == pytest.approx(trl_loss, abs=1e-4)
    # One sequence per row (PPO's layout) scores the same tokens as TRL's completion mask.
    rows = rows_to_scored_tokens(trl_ids, trl_batch["attention_mask"], trl_batch["completion_mask"])
    with torch.no_grad():
        per_row = sequence_sums(token_logprobs(policy, rows), rows.seq_index, rows.num_seqs)
        ours = _seq_logps(policy, DPOCollator(tok.pad_token_id, shared_prefix=False)(examples))
    assert torch.allclose(per_row, ours, atol=1e-5)


def test_chunked_and_full_forward_paths_agree(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = llama_tokenizer(chat=True)
    examples, _ = encode_pairs(tok, toy_pairs(4), max_length=64, max_prompt_length=32)
    tokens = DPOCollator(tok.pad_token_id, shared_prefix=True)(examples).tokens
    model = AutoModelForCausalLM.from_pretrained(tiny)

    def values_and_grad(**kwargs: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        values = token_logprobs(model, tokens, **kwargs)
        values.sum().backward()
        return values.detach(), model.get_output_embeddings().weight.grad.clone()

    plain = values_and_grad()
    chunked = values_and_grad(chunk_rows=7)  # recomputed chunks of the LM head
    monkeypatch.setattr("training.lib.logprobs.causal_lm_parts", lambda m: None)
    full = values_and_grad()  # the full-forward path, for models with logit transforms
    for other in (chunked, full):
        assert torch.allclose(other[0], plain[0], atol=1e-5) and torch.allclose(other[1], plain[1], atol=1e-5)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "robust"])
def test_a_few_steps_separate_chosen_from_rejected(tiny: Path, tmp_path: Path, loss: str) -> None:
    config = DPOConfig(model=str(tiny), loss=loss, label_smoothing=0.1 if loss == "robust" else 0.0, beta=0.5,
                       learning_rate=5e-3, batch_size=4, max_steps=8, seed=0)
    result = train_dpo(config, toy_pairs(16), tmp_path / "ckpt")
    first, last = result.history[0], result.history[-1]
    assert first["margin"] == pytest.approx(0.0, abs=1e-4)  # before any update the policy is the reference
    assert last["margin"] > 0.5 and last["accuracy"] == 1.0
    assert last["loss"] < first["loss"] - 0.1
    assert last["rewards_chosen"] > last["rewards_rejected"] and last["kl"] > 0
    assert result.metrics["pairs_dropped"] == 0 and result.metrics["shared_prefix"] == 1.0


def test_precomputed_reference_equals_on_the_fly(tiny: Path, tmp_path: Path) -> None:
    pairs = toy_pairs(12)
    runs = {}
    for precompute in (True, False):
        config = DPOConfig(model=str(tiny), beta=0.5, learning_rate=5e-3, batch_size=4, max_steps=3,
                           precompute_ref=precompute)
        runs[precompute] = train_dpo(config, pairs, tmp_path / f"ckpt-{precompute}").history
    for with_cache, per_step in zip(runs[True], runs[False], strict=True):
        for key in ("loss", "margin", "rewards_chosen", "kl"):
            assert with_cache[key] == pytest.approx(per_step[key], abs=1e-4)
    assert runs[True][-1]["margin"] != pytest.approx(0.0, abs=1e-3)  # later steps were not trivial


def test_lora_reference_is_the_base_model_and_merged_checkpoint_loads(tiny: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    tok = llama_tokenizer(chat=True)
    examples, _ = encode_pairs(tok, toy_pairs(4), max_length=64, max_prompt_length=32)
    batch = DPOCollator(tok.pad_token_id, shared_prefix=True)(examples)
    base = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        expected = _seq_logps(base, batch)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                                LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # adapters that matter
        adapted = _seq_logps(peft_model, batch)
        with peft_model.disable_adapter():
            reference = _seq_logps(peft_model, batch)
    assert torch.allclose(reference, expected, atol=1e-5)
    assert not torch.allclose(adapted, expected, atol=1e-2)

    config = DPOConfig(model=str(tiny), lora=True, lora_r=4, lora_alpha=8, beta=0.5, learning_rate=1e-2,
                       batch_size=4, max_steps=2)
    result = train_dpo(config, toy_pairs(8), tmp_path / "lora-ckpt")
    model, _, meta = load_checkpoint(result.checkpoint_path)
    assert meta["weights"] == "merged" and not hasattr(model, "peft_config")
    assert not any("lora" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert not torch.allclose(_seq_logps(model, batch), expected, atol=1e-4)  # the merge changed the weights


def test_checkpoint_appears_atomically_with_lineage(tiny: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "runs" / "ckpt"
    seen: list[bool] = []
    config = DPOConfig(model=str(tiny), batch_size=4, max_steps=2)
    lineage = {"snapshot_sha256": "abc123", "parent_checkpoint": "ckpt-0", "run_id": 7}
    result = train_dpo(config, toy_pairs(8), out, lambda *_: seen.append(out.exists()), lineage=lineage)
    assert seen == [False, False]  # nothing visible while training
    meta = json.loads((out / "meta.json").read_text())
    assert meta["lineage"] == lineage and meta["kind"] == "dpo" and meta["weights"] == "full"
    assert meta["config"]["max_steps"] == 2 and meta["base_model"] == str(tiny)
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt"]  # no temp folder left
    assert Path(result.checkpoint_path) == out
    with pytest.raises(FileExistsError):
        train_dpo(config, toy_pairs(8), out)  # never overwritten

    def broken(*_: object, **__: object) -> object:
        def verify(*_: object) -> None:
            raise AssertionError("verification failed")
        return verify

    monkeypatch.setattr("training.lib.dpo.probe_verifier", broken)
    with pytest.raises(AssertionError):
        train_dpo(config, toy_pairs(8), tmp_path / "runs" / "bad")
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt"]  # failure leaves nothing behind
    assert checkpoint_module.META_FILE == "meta.json"


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama_bf16(tmp_path_factory.mktemp("tiny-bf16") / "llama", chat=True)


@pytest.mark.parametrize("weights", ["auto", "checkpoint"])
@pytest.mark.parametrize("save", ["full", "merged", "adapter"])
def test_a_bf16_base_gives_bf16_checkpoints_that_reload(tiny_bf16: Path, tmp_path: Path, save: str,
                                                          weights: str) -> None:
    """On the CPU "auto" trains fp32 weights and "checkpoint" bf16 ones; both save bf16, as the base is."""
    lora = {} if save == "full" else {"lora": True, "lora_r": 4, "lora_alpha": 8, "lora_merge": save == "merged"}
    config = DPOConfig(model=str(tiny_bf16), beta=0.5, learning_rate=1e-2, batch_size=4, max_steps=2,
                       weights=weights, **lora)
    result = train_dpo(config, toy_pairs(8), tmp_path / "ckpt")
    folder = Path(result.checkpoint_path)
    meta = json.loads((folder / "meta.json").read_text())
    trained = "bfloat16" if weights == "checkpoint" else "float32"
    assert meta["weights"] == save and meta["dtype"] == "bfloat16"
    assert meta["precision"] == {"base": "bfloat16", "weights": trained, "autocast": None}
    assert safetensors_dtypes(folder) == {"BF16"}
    if save == "adapter":
        assert not (folder / "config.json").exists()
        model, _, _ = load_checkpoint(folder, dtype=torch.bfloat16)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    else:
        assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.dtype == torch.bfloat16 and not any("lora" in n for n, _ in model.named_parameters())
    start = AutoModelForCausalLM.from_pretrained(tiny_bf16)
    tok = llama_tokenizer(chat=True)
    batch = DPOCollator(tok.pad_token_id, shared_prefix=False)(encode_pairs(tok, toy_pairs(2), max_length=64,
                                                                             max_prompt_length=32)[0])
    with torch.no_grad():  # the run changed the policy, even with bf16 weights (learning_rate 1e-2)
        assert not torch.equal(_seq_logps(model.float(), batch), _seq_logps(start.float(), batch))


def test_an_fp32_base_gives_fp32_checkpoints_whatever_the_setting(tiny: Path, tmp_path: Path) -> None:
    result = train_dpo(DPOConfig(model=str(tiny), batch_size=4, max_steps=1, weights="checkpoint"), toy_pairs(4),
                       tmp_path / "ckpt")
    folder = Path(result.checkpoint_path)
    assert json.loads((folder / "meta.json").read_text())["dtype"] == "float32"
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    assert safetensors_dtypes(folder) == {"F32"}


def test_ipo_and_robust_losses_equal_their_closed_forms() -> None:
    chosen, rejected = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    n_c, n_r, beta, eps = torch.tensor([4.0, 2.0]), torch.tensor([1.0, 5.0]), 0.5, 0.2

    def logsig(x: float) -> float:
        return -math.log1p(math.exp(-x))

    ipo = ipo_loss(chosen, rejected, beta=beta, chosen_tokens=n_c, rejected_tokens=n_r)
    assert ipo.tolist() == pytest.approx([(2.0 / 4 - 0.5 / 1 - 1.0) ** 2, (-1.0 / 2 - 1.0 / 5 - 1.0) ** 2])
    robust = robust_loss(chosen, rejected, beta=beta, label_smoothing=eps)
    for value, d in zip(robust.tolist(), (1.5, -2.0), strict=True):
        clean, flipped = -logsig(beta * d), -logsig(-beta * d)
        assert value == pytest.approx(((1 - eps) * clean - eps * flipped) / (1 - 2 * eps))
    assert robust_loss(chosen, rejected, beta=beta, label_smoothing=0.0).tolist() == pytest.approx(
        sigmoid_loss(chosen, rejected, beta=beta).tolist())
    cdpo = sigmoid_loss(chosen, rejected, beta=beta, label_smoothing=eps)
    expected_cdpo = [-(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d) for d in (1.5, -2.0)]
    assert cdpo.tolist() == pytest.approx(expected_cdpo)
    named = dpo_loss("ipo", chosen, rejected, beta=beta, chosen_tokens=n_c, rejected_tokens=n_r)
    assert torch.equal(named, ipo)
    with pytest.raises(ValueError):
        dpo_loss("hinge", chosen, rejected, beta=beta, chosen_tokens=n_c, rejected_tokens=n_r)


def test_truncation_cuts_prompt_left_response_right_and_counts_ties() -> None:
    example = fit_lengths([1, 10, 11, 12, 13], [20, 21, 22, 23], [30], max_length=6, max_prompt_length=3,
                          keep_first={1})
    assert example.prompt_ids == [1, 12, 13]  # BOS kept, oldest prompt tokens gone
    assert example.chosen_ids == [20, 21, 22] and example.rejected_ids == [30]
    assert example.prompt_truncated and example.response_truncated
    tok = llama_tokenizer(chat=True)
    pairs = toy_pairs(3) + [PreferencePair(prompt="hello", chosen="yes", rejected="no", tie=True)]
    examples, report = encode_pairs(tok, pairs, max_length=12, max_prompt_length=8)
    assert (report.pairs_in, report.ties_skipped, report.examples) == (4, 1, 3)
    assert all(len(e.prompt_ids) <= 8 and e.separate_length <= 12 for e in examples)
    assert report.as_metrics()["pairs_dropped"] == 0


def test_command_line_trains_from_a_snapshot_file(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from training.lib.dpo_cli import main

    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt_id": p.prompt_id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "tie": False}
            for p in toy_pairs(6)] + [{"prompt": "hello", "chosen": "yes", "rejected": "no", "tie": True}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cli-ckpt"
    assert main(["--data", str(data), "--model", str(tiny), "--out", str(out), "--max-steps", "2",
                 "--loss", "ipo", "--lineage", '{"run_id": 9}']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["checkpoint"] == str(out) and printed["metrics"]["ties_skipped"] == 1
    meta = json.loads((out / "meta.json").read_text())
    assert meta["lineage"] == {"data": str(data), "run_id": 9} and meta["config"]["loss"] == "ipo"


def test_config_refuses_bad_values_and_bf16_on_a_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_autocast(DPOConfig(model="m"), cpu) is None  # "auto" is fp32 on a CPU
    with pytest.raises(ValueError, match="bf16"):
        resolve_autocast(DPOConfig(model="m", dtype="bf16"), cpu)
    for bad in ({"loss": "hinge"}, {"beta": 0.0}, {"label_smoothing": 0.5}, {"max_prompt_length": 1024}):
        with pytest.raises(ValueError):
            DPOConfig(model="m", **bad)
    config = DPOConfig(model="m", lora=True, lora_target_modules=("q_proj", "v_proj"))
    assert DPOConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # meta.json round trip
