"""generate_local on a tiny random Llama built in the test: order, seeds, progress, device and dtype. No downloads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.lib.generation import GeneratedText, GenerationConfig, generate_local, resolve_device, resolve_dtype

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = (
    "the a cat dog sun moon tree river stone bird fish book lamp road hill cloud rain snow wind fire "
    "why how what is are can do make give tell short long red blue green small big happy quick slow"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
PROMPTS = [
    [{"role": "user", "content": "tell the cat why"}],
    [{"role": "user", "content": "what is a big red river and how can the bird make a stone"}],
    [{"role": "user", "content": "sun"}],
    [
        {"role": "user", "content": "give a short book"},
        {"role": "assistant", "content": "the lamp road"},
        {"role": "user", "content": "tell the long hill and the slow wind"},
    ],
    [{"role": "user", "content": "how do fish make rain"}],
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer Llama with a 48-word WordLevel tokenizer and a chat template, saved as a folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        # A wide init makes the logits depend strongly on the prompt, so different prompts
        # give different greedy answers and the order test means something.
        initializer_range=0.5,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def _config(model: str, **overrides: object) -> GenerationConfig:
    values: dict[str, object] = {"model": model, "max_new_tokens": 12, "batch_size": 2, "seed": 7}
    values.update(overrides)
    return GenerationConfig(**values)  # type: ignore[arg-type]


def test_outputs_come_back_in_input_order(tiny_model: str) -> None:
    # Greedy and one prompt per batch: each answer depends on its prompt only,
    # so the batched run must match each prompt generated alone.
    config = _config(tiny_model, temperature=0.0, batch_size=1)

    together = [g.text for g in generate_local(config, PROMPTS)]
    alone = [generate_local(config, [prompt])[0].text for prompt in PROMPTS]

    assert together == alone
    assert len(set(together)) > 1, "the tiny model should answer different prompts differently"


def test_reversed_input_gives_reversed_output(tiny_model: str) -> None:
    # The PROMPTS have distinct token lengths, so both runs sort them into the same
    # batches (ties would keep input order and batch differently).
    config = _config(tiny_model, temperature=1.0, top_p=0.95)

    forward = generate_local(config, PROMPTS)
    backward = generate_local(config, PROMPTS[::-1])

    assert [g.text for g in backward] == [g.text for g in forward][::-1]


def test_same_seed_gives_same_text_and_another_seed_differs(tiny_model: str) -> None:
    first = generate_local(_config(tiny_model, temperature=1.0, top_p=1.0), PROMPTS)
    again = generate_local(_config(tiny_model, temperature=1.0, top_p=1.0), PROMPTS)
    other = generate_local(_config(tiny_model, temperature=1.0, top_p=1.0, seed=8), PROMPTS)

    assert [g.text for g in again] == [g.text for g in first]
    assert [g.text for g in other] != [g.text for g in first]


def test_records_sampling_parameters_seed_and_token_count(tiny_model: str) -> None:
    config = _config(tiny_model, temperature=0.5, top_p=0.8)

    results = generate_local(config, PROMPTS)

    assert all(isinstance(g, GeneratedText) for g in results)
    assert {g.seed for g in results} == {7, 8, 9}  # three batches of at most two prompts
    for generated in results:
        assert generated.params == {
            "model": tiny_model,
            "temperature": 0.5,
            "top_p": 0.8,
            "max_new_tokens": 12,
            "batch_size": 2,
        }
        assert 1 <= generated.tokens <= 12
        assert "<|assistant|>" not in generated.text and "<pad>" not in generated.text


def test_progress_is_called_after_each_batch_up_to_the_total(tiny_model: str) -> None:
    calls: list[tuple[int, int]] = []

    generate_local(_config(tiny_model), PROMPTS, progress=lambda done, total: calls.append((done, total)))

    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_no_prompts_means_no_work(tmp_path: Path) -> None:
    # The model is never loaded for an empty list, so a missing folder is fine.
    assert generate_local(_config(str(tmp_path / "absent")), []) == []


@pytest.mark.parametrize(
    "overrides",
    [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"batch_size": 0}, {"dtype": "int8"}],
)
def test_config_rejects_nonsense(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _config("m", **overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device": "gpu"}, "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        ({"device": "cuda:x"}, "got 'cuda:x'"),
        ({"device": "CPU"}, "got 'CPU'"),
        ({"dtype": "fp32"}, "dtype must be one of auto, float32, bfloat16, float16, got 'fp32'"),
        ({"kv_cache": "paged"}, "kv_cache must be one of dynamic, static, got 'paged'"),
    ],
)
def test_a_device_dtype_or_cache_it_cannot_read_is_refused_naming_it(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _config("m", **overrides)


# Golden outputs of the tiny model for seed 7 on the CPU in fp32, from the code before "auto"
# devices existed (when GenerationConfig defaulted to device="cpu", dtype="float32"). A torch or
# transformers upgrade may change the random init or the sampler and so these; a change of ours must not.
GOLDEN_SAMPLED = [
    "",
    "book are cat lamp tree bird stone are the tree",
    "what book quick rain long snow river are tell are",
    "tell sun cloud cloud rain bird can tree long red tree",
    "are short slow sun slow short quick wind do green short",
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' picks the GPU here")
def test_auto_runs_on_the_cpu_in_float32_and_the_text_for_a_seed_is_unchanged(tiny_model: str) -> None:
    config = _config(tiny_model, temperature=1.0, top_p=0.95)
    assert (config.device, config.dtype, config.kv_cache) == ("auto", "auto", "dynamic")

    auto = generate_local(config, PROMPTS)
    explicit = generate_local(_config(tiny_model, temperature=1.0, top_p=0.95, device="cpu", dtype="float32"), PROMPTS)

    assert [g.text for g in auto] == [g.text for g in explicit] == GOLDEN_SAMPLED
    assert [g.seed for g in auto] == [7, 8, 7, 9, 8] and [g.tokens for g in auto] == [1, 12, 12, 12, 12]
    assert {(g.device, g.dtype) for g in auto} == {("cpu", "float32")}
    assert "device" not in auto[0].params and "dtype" not in auto[0].params  # not sampling parameters


def test_an_explicit_dtype_passes_through_to_the_weights(tiny_model: str) -> None:
    results = generate_local(_config(tiny_model, device="cpu", dtype="bfloat16"), PROMPTS[:2])

    assert {(g.device, g.dtype) for g in results} == {("cpu", "bfloat16")}
    assert results[0].params == _config(tiny_model).sampling_params()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_static_cache_samples_the_same_text_as_the_dynamic_one_on_the_cpu(tiny_model: str, temperature: float) -> None:
    dynamic = generate_local(_config(tiny_model, temperature=temperature, device="cpu"), PROMPTS)
    static = generate_local(_config(tiny_model, temperature=temperature, device="cpu", kv_cache="static"), PROMPTS)

    assert [g.text for g in static] == [g.text for g in dynamic]
    assert static[0].params == dynamic[0].params  # the cache is not a sampling parameter


def test_explicit_devices_pass_through_and_auto_follows_the_hardware() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    for dtype in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(dtype, "cpu") == dtype
        assert resolve_dtype(dtype, "cuda") == dtype
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "mps") == "float16"


@pytest.mark.parametrize(("capability", "expected"), [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((7, 5), "float16")])
def test_auto_dtype_on_a_gpu_is_bf16_where_the_gpu_has_it_else_fp16(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    # H100/A100 have native bf16; a T4 (7.5) emulates it but has fp16 tensor cores.
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    assert resolve_dtype("auto", "cuda") == expected
    assert resolve_dtype("auto", "cuda:1") == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_this_process_does_not_see_is_a_clear_error_before_loading(tmp_path: Path, device: str) -> None:
    # The folder does not exist: the device is checked before the weights are read.
    with pytest.raises(ValueError, match=rf"device='{device}', but this process sees 0 CUDA GPU"):
        generate_local(_config(str(tmp_path / "absent"), device=device), PROMPTS[:1])
