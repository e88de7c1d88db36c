"""Data and format tests of the reward-model library, on the tiny offline backbones of tests/tiny.py."""

from __future__ import annotations

import pytest
import torch

from rewardmodel.lib import runtime
from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.data import PairCollator, PairFormatter, PreferencePair, parse_pair, split_by_prompt
from tests.tiny import (
    bert_tokenizer,
    counting_pairs,
    llama_tokenizer,
)


def test_parse_accepts_snapshot_and_trl_formats() -> None:
    ours = parse_pair({"prompt_id": 17, "prompt": [{"role": "user", "content": "hi"}], "chosen": "a",
                       "rejected": "b", "tie": False, "strength": 2, "annotators": 3, "agreement": 0.67})
    assert (ours.strength, ours.annotators, ours.agreement, ours.margin_value(1.0)) == (2, 3, 0.67, 0.5)
    trl = parse_pair({"prompt": [{"role": "user", "content": "hi"}],
                      "chosen": [{"role": "assistant", "content": "yes"}],
                      "rejected": [{"role": "assistant", "content": "no"}], "margin": 1.5})
    assert (trl.chosen, trl.rejected, trl.margin_value(1.0), trl.tie) == ("yes", "no", 1.5, False)
    hh = parse_pair({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"})
    assert (hh.prompt, hh.chosen, hh.rejected) == ("\n\nHuman: hi\n\nAssistant:", " hello", " go")
    implicit = parse_pair({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                           "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]})
    assert (implicit.prompt, implicit.chosen) == ([{"role": "user", "content": "hi"}], "yo")


def test_split_is_by_prompt_never_by_pair() -> None:
    pairs = counting_pairs(40, 3, noise=0.0, seed=1)
    train, held_out = split_by_prompt(pairs, 0.25, seed=3)
    assert {p.prompt_id for p in train}.isdisjoint({p.prompt_id for p in held_out})
    assert len(held_out) == 30 and len(train) + len(held_out) == len(pairs)


def test_encoder_pair_template_and_causal_eos() -> None:
    pair = PreferencePair(prompt="hello world", chosen="yes", rejected="no no")
    enc = PairFormatter(bert_tokenizer(), causal=False).encode([pair], 64)[0]
    tok = bert_tokenizer()
    assert enc.prompt_ids + enc.chosen_ids == tok("hello world", "yes")["input_ids"]
    llama = llama_tokenizer()
    enc = PairFormatter(llama, causal=True).encode([pair], 64)[0]
    assert enc.prompt_ids[0] == llama.bos_token_id and enc.chosen_ids[-1] == llama.eos_token_id


def test_chat_template_shares_the_prompt_and_ends_the_turn() -> None:
    tok = llama_tokenizer(chat=True)
    pair = PreferencePair(prompt=[{"role": "user", "content": "hello"}], chosen="yes", rejected="no")
    enc = PairFormatter(tok, causal=True).encode([pair], 64)[0]
    assert tok.convert_ids_to_tokens(enc.prompt_ids) == ["<s>", "<|user|>", "hello", "<|end|>", "<|assistant|>"]
    assert tok.convert_ids_to_tokens(enc.chosen_ids) == ["yes", "<|end|>"]


def test_collator_pads_dynamically_and_indexes_last_tokens() -> None:
    tok = llama_tokenizer()
    pairs = [PreferencePair(prompt="hello", chosen="yes yes yes yes yes yes", rejected="no"),
             PreferencePair(prompt="hello world", chosen="yes", rejected="no no")]
    encoded = PairFormatter(tok, causal=True).encode(pairs, 64)
    batch = PairCollator(tok.pad_token_id)(encoded)
    assert batch.input_ids.shape == (4, 9)  # <s> hello yes yes yes yes yes yes </s>
    flat = batch.input_ids.flatten()
    assert (flat[batch.last_index] == tok.eos_token_id).all()
    assert batch.padded_tokens == 36 and batch.computed_tokens == 9 + 4 + 5 + 6 and batch.position_ids is None
    packed = PairCollator(tok.pad_token_id, pack=True)(encoded)
    assert packed.padded_tokens == packed.computed_tokens == 24  # all four fit one row of 24, no padding
    mask = packed.attention_mask[0, 0]
    assert mask[8, :9].all() and not mask[9, :9].any() and not mask[7, 8]  # separate, causal sequences
    assert (packed.input_ids.flatten()[packed.last_index] == tok.eos_token_id).all()


def test_cpu_runs_fp32_unless_bf16_is_asked_for_and_native(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert runtime.resolve_autocast_dtype(RewardConfig(backbone="x"), cpu) is None
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16"):
        runtime.resolve_autocast_dtype(RewardConfig(backbone="x", dtype="bf16"), cpu)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_autocast_dtype(RewardConfig(backbone="x", dtype="bf16"), cpu) == torch.bfloat16
    assert not runtime.resolve_compile(RewardConfig(backbone="x"), cpu)
    # "auto" is plain fp32 on a GPU too (bf16 autocast measured slower there for the default backbones).
    assert runtime.resolve_autocast_dtype(RewardConfig(backbone="x"), torch.device("cuda")) is None
    # "auto" never compiles, not even on a GPU: recompiles per batch shape cost more than they save there.
    assert not runtime.resolve_compile(RewardConfig(backbone="x"), torch.device("cuda"))
    assert runtime.resolve_compile(RewardConfig(backbone="x", compile="on"), cpu)
    with pytest.raises(ValueError, match="ensemble_size"):
        RewardConfig(backbone="x", ensemble_size=0)


def test_forward_context_keeps_cudnn_attention_out_on_cuda_only():
    """On a GPU our forward passes never pick cuDNN attention (a plan build per batch shape); the CPU is untouched."""
    backends = torch.backends.cuda
    before = (backends.cudnn_sdp_enabled(), backends.flash_sdp_enabled(), backends.mem_efficient_sdp_enabled())
    assert before[0], "torch enables cuDNN attention by default; this test checks that we switch it off"
    with runtime.forward_context(torch.device("cuda"), torch.bfloat16):
        assert not backends.cudnn_sdp_enabled()
        assert backends.flash_sdp_enabled() and backends.mem_efficient_sdp_enabled()
    assert (backends.cudnn_sdp_enabled(), backends.flash_sdp_enabled(), backends.mem_efficient_sdp_enabled()) == before
    with runtime.forward_context(torch.device("cpu"), None):
        assert backends.cudnn_sdp_enabled()
        assert not torch.is_autocast_enabled("cpu")


def test_tf32_matmuls_only_on_cuda_and_only_for_auto_or_tf32() -> None:
    """TF32 is scoped to a run on a GPU, restored afterwards, and never touches CPU runs or strict fp32."""
    before = torch.get_float32_matmul_precision()
    assert before == "highest", "torch's default; this test checks that we change it only inside the scope"
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for dtype in ("auto", "tf32"):
        with runtime.matmul_precision(RewardConfig(backbone="x", dtype=dtype), cuda):
            assert torch.get_float32_matmul_precision() == "high"
        assert torch.get_float32_matmul_precision() == before
    for config, device in ((RewardConfig(backbone="x", dtype="fp32"), cuda), (RewardConfig(backbone="x"), cpu)):
        with runtime.matmul_precision(config, device):
            assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="dtype"):
        RewardConfig(backbone="x", dtype="fp16")


def _packed_pairs() -> tuple[list, int]:
    tok = llama_tokenizer()
    pairs = [PreferencePair(prompt="hello", chosen="yes yes yes", rejected="no"),
             PreferencePair(prompt="hello world again", chosen="yes", rejected="no no no no")]
    return PairFormatter(tok, causal=True).encode(pairs, 64), tok.pad_token_id


def test_block_mask_built_on_the_target_device_matches_the_cpu_one() -> None:
    encoded, pad = _packed_pairs()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for shared in (False, True):
        reference = PairCollator(pad, shared_prefix=shared, pack=True)(encoded)
        assert reference.attention_mask.dim() == 4
        for device in devices:
            built = PairCollator(pad, shared_prefix=shared, pack=True, mask_device=device)(encoded)
            assert built.attention_mask.device.type == device
            assert torch.equal(built.attention_mask.cpu(), reference.attention_mask)


def test_prefetched_batches_keep_their_order_and_are_made_on_a_helper_thread() -> None:
    import threading

    from rewardmodel.lib.train import _prefetched

    made_on: list[str] = []

    def make(item: int) -> int:
        made_on.append(threading.current_thread().name)
        return item * 10

    assert list(_prefetched(list(range(7)), make, ahead=False)) == [0, 10, 20, 30, 40, 50, 60]
    assert set(made_on) == {threading.current_thread().name}
    made_on.clear()
    assert list(_prefetched(list(range(7)), make, ahead=True)) == [0, 10, 20, 30, 40, 50, 60]
    assert all(name.startswith("collate") for name in made_on)

    def broken(item: int) -> int:
        if item == 3:
            raise ValueError("bad batch 3")
        return item

    with pytest.raises(ValueError, match="bad batch 3"):
        list(_prefetched(list(range(7)), broken, ahead=True))
