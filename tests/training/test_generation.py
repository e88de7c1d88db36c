"""generate_local on a tiny random Llama built in the test: order, seeds, progress. No files, no downloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.lib.generation import GeneratedText, GenerationConfig, generate_local

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
