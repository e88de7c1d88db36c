"""The `weights` setting: which dtype weights train in, and which dtype a folder's weights are stored in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewardmodel.lib.config import RewardConfig
from rewardmodel.lib.precision import stored_dtype, weights_dtype
from tests.tiny import safetensors_dtypes, save_tiny_bert, save_tiny_llama, save_tiny_llama_bf16
from training.lib.dpo_config import DPOConfig
from training.lib.ppo_config import PPOConfig

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize(("setting", "device", "bf16_gpu", "stored", "expected"), [
    ("auto", "cuda", True, BF16, BF16),   # the checkpoint's own dtype on a bf16 GPU
    ("auto", "cuda", True, FP32, FP32),   # an fp32 checkpoint stays fp32
    ("auto", "cuda", True, FP16, BF16),   # fp16 weights would need loss scaling
    ("auto", "cuda", False, BF16, FP32),  # no bf16 on this GPU
    ("auto", "cpu", False, BF16, FP32),   # CPUs: fp32 as before, whatever the checkpoint
    ("auto", "cpu", True, BF16, FP32),
    ("auto", "mps", False, BF16, FP32),
    ("fp32", "cuda", True, BF16, FP32),   # fp32 master weights, bf16 only through autocast
    ("fp32", "cpu", False, BF16, FP32),
    ("checkpoint", "cpu", False, BF16, BF16),  # asked for: the CPU runs the bf16 path too
    ("checkpoint", "cpu", False, FP32, FP32),
    ("checkpoint", "cuda", True, BF16, BF16),
    ("checkpoint", "cuda", False, FP32, FP32),
])
def test_weights_train_in_the_checkpoint_dtype_only_on_a_bf16_gpu_or_when_asked(
        setting: str, device: str, bf16_gpu: bool, stored: torch.dtype, expected: torch.dtype) -> None:
    assert weights_dtype(setting, device_type=device, bf16_supported=bf16_gpu, stored=stored) == expected


def test_impossible_weights_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="without bf16"):
        weights_dtype("checkpoint", device_type="cuda", bf16_supported=False, stored=BF16)
    with pytest.raises(ValueError, match="unknown weights"):
        weights_dtype("bf16", device_type="cpu", bf16_supported=False, stored=BF16)
    for config in (lambda w: RewardConfig(backbone="x", weights=w), lambda w: DPOConfig(model="x", weights=w),
                   lambda w: PPOConfig(model="x", weights=w)):
        assert [config(w).weights for w in ("auto", "fp32", "checkpoint")] == ["auto", "fp32", "checkpoint"]
        with pytest.raises(ValueError, match="weights must be one of"):
            config("half")
    assert PPOConfig(model="x").gradient_checkpointing is False


def test_stored_dtype_reads_the_config_then_the_safetensors(tmp_path: Path) -> None:
    assert stored_dtype(save_tiny_llama_bf16(tmp_path / "bf16")) == BF16
    assert safetensors_dtypes(tmp_path / "bf16") == {"BF16"}
    assert stored_dtype(save_tiny_llama(tmp_path / "fp32")) == FP32  # e.g. a GGUF default dequantised to fp32
    assert stored_dtype(save_tiny_bert(tmp_path / "bert")) == FP32
    for key in ("dtype", "torch_dtype"):  # transformers 5 writes "dtype", older ones "torch_dtype"
        config_file = tmp_path / "bf16" / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("dtype", None)
        config.pop("torch_dtype", None)
        config_file.write_text(json.dumps({**config, key: "float16"}))
        assert stored_dtype(tmp_path / "bf16") == FP16
    config_file.write_text(json.dumps(config))  # the config does not say: the tensors do
    assert stored_dtype(tmp_path / "bf16") == BF16
    assert stored_dtype(tmp_path / "empty-folder") == FP32
