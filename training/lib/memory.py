"""How much GPU memory a run needs, by kind (DPO, PPO, reward model) and mode (full, LoRA, QLoRA).

The accounting follows what the libraries hold on the device:

* **weights**: trainable ones in the training precision (bf16 weights with bf16 AdamW state, or
  fp32 master weights with fp32 state: today's default, bf16 only in autocast), frozen ones in
  bf16, and a QLoRA base at 4 bits (NF4, blocks of 64 with double-quantised scales) except its
  embeddings and LM head, which stay bf16;
* **optimizer and gradients** for the trainable parameters only (AdamW: two moments);
* **DPO** computes the reference log-probabilities once before training (``precompute_ref``), so no
  reference model stays on the device; LoRA's reference is the base with its adapters off;
* **PPO** keeps a frozen copy of the starting policy as its reference (none with LoRA), a value
  head, the reward model (frozen, bf16) and the rollouts' KV cache;
* **activations** of a micro-batch: with gradient checkpointing, each layer's input plus one
  layer's working set recomputed at a time; without, every layer's working set (about 34 bytes per
  token per hidden unit in bf16 with fused attention, Korthikanti et al. 2022); plus the LM head's
  logits, which ``training.lib.logprobs`` builds in chunks of at most 4,096 rows in fp32;
* **overhead**: the CUDA context and the allocator's fragmentation, taken as 2 GiB plus 10%.

On several GPUs (``Workload.ranks``) each process takes its share of a micro-batch, so it holds
the activations of that share. Sharded full fine-tuning (``Workload.sharded``: FSDP2,
`training.lib.sharding`) also splits the trained weights, their gradients and AdamW state (and
PPO's reference copy) into 1/N per GPU; each GPU then holds besides its shard the layers being
computed, gathered whole: the root unit (embeddings, final norm, LM head) and two decoder layers
(the one computing and the one prefetched), in bf16 for a policy (its compute dtype) and in the
weights' own dtype for a reward model; PPO as much again for its reference copy. LoRA
and QLoRA replicate (their trainable state is small), as do PPO's reward model and value head and a
reward model's heads.

It is an estimate for choosing a mode and sizing a machine, not a promise: measure one row on the
GPU you have (``bench/gpu/``). Pure module: no torch import, so a web process can call it.

    python -m training.lib.memory --gpu-gb 80     # the README's table
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["KINDS", "MODES", "SHAPES", "Estimate", "Shape", "Workload", "choose_mode", "estimate", "largest_fitting"]

GIB = 1024**3
KINDS = ("dpo", "ppo", "reward_model")
MODES = ("full-fp32", "full-bf16", "lora", "qlora")
LORA_TARGETS = 7  # all-linear on a Llama-style block: q, k, v, o, gate, up, down
LOGIT_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's sizes (Llama, Qwen, Mistral, SmolLM layout)."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def linear_params(self) -> int:
        """The weights of the blocks' linear layers (what LoRA adapts and QLoRA quantises)."""
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * (2 * self.hidden + 2 * kv)
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.layers * 2 * self.hidden + self.hidden

    def lora_params(self, rank: int) -> int:
        kv = self.kv_heads * self.head_dim
        # A LoRA pair adds rank * (d_in + d_out) for each adapted linear layer.
        dims = [(self.hidden, self.hidden)] * 2 + [(self.hidden, kv)] * 2 + [(self.hidden, self.intermediate)] * 3
        assert len(dims) == LORA_TARGETS
        return self.layers * sum(rank * (a + b) for a, b in dims)

    @classmethod
    def from_config(cls, config: Mapping, name: str = "") -> Shape:
        """From a Hugging Face ``config.json`` of a causal LM."""
        try:
            heads = int(config["num_attention_heads"])
            return cls(
                name=name or str(config.get("_name_or_path", "model")),
                hidden=int(config["hidden_size"]),
                layers=int(config["num_hidden_layers"]),
                intermediate=int(config["intermediate_size"]),
                vocab=int(config["vocab_size"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except KeyError as missing:
            raise ValueError(f"the model's config has no {missing.args[0]}: not a decoder-only LM this "
                             "accounting knows") from None


# Public configurations of common instruct models, smallest first (sizes from their config.json).
SHAPES: tuple[Shape, ...] = (
    Shape("SmolLM2-135M", 576, 30, 1536, 49152, 9, 3, tied_embeddings=True),
    Shape("Qwen2.5-0.5B", 896, 24, 4864, 151936, 14, 2, tied_embeddings=True),
    Shape("SmolLM2-1.7B", 2048, 24, 8192, 49152, 32, 32, tied_embeddings=True),
    Shape("Qwen2.5-3B", 2048, 36, 11008, 151936, 16, 2, tied_embeddings=True),
    Shape("Qwen2.5-7B", 3584, 28, 18944, 152064, 28, 4),
    Shape("Llama-3.1-8B", 4096, 32, 14336, 128256, 32, 8),
    Shape("Qwen2.5-14B", 5120, 48, 13824, 152064, 40, 8),
    Shape("Qwen2.5-32B", 5120, 64, 27648, 152064, 40, 8),
    Shape("Llama-3.1-70B", 8192, 80, 28672, 128256, 64, 8),
)


@dataclass(frozen=True)
class Workload:
    """One micro-batch: ``batch`` pairs (DPO, reward model) or rollouts (PPO) of ``length`` tokens.

    PPO generates ``new_tokens`` of each rollout's ``length``. ``reward_shape`` is PPO's reward
    model (default: the policy's own shape).
    """

    batch: int = 4
    length: int = 1024
    new_tokens: int = 256
    gradient_checkpointing: bool = True
    lora_rank: int = 16
    reward_shape: Shape | None = None
    ranks: int = 1
    sharded: bool = False

    @property
    def share(self) -> int:
        """Sequences of a micro-batch each process runs (the largest share)."""
        return -(-self.batch // self.ranks)


@dataclass(frozen=True)
class Estimate:
    """Bytes on one device, by what holds them."""

    weights: float
    optimizer: float
    activations: float
    other_models: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.activations + self.other_models + self.overhead

    def fits(self, budget_bytes: float) -> bool:
        return self.total <= budget_bytes


def _trainable(shape: Shape, mode: str, rank: int) -> int:
    return shape.lora_params(rank) if mode in ("lora", "qlora") else shape.params


def _weights(shape: Shape, mode: str, rank: int) -> float:
    """Weights of the trained model: frozen base plus trainable parameters."""
    if mode == "full-fp32":
        return 4.0 * shape.params
    if mode == "full-bf16":
        return 2.0 * shape.params
    base = 2.0 * shape.params if mode == "lora" else 0.53 * shape.linear_params + 2.0 * (
        shape.params - shape.linear_params)
    return base + 4.0 * shape.lora_params(rank)  # adapters train in fp32


def _optimizer(shape: Shape, mode: str, rank: int) -> float:
    """Gradients and AdamW's two moments, in the trainable parameters' own precision."""
    per_param = 6.0 if mode == "full-bf16" else 12.0
    return per_param * _trainable(shape, mode, rank)


def _activations(shape: Shape, sequences: int, tokens: int, checkpointing: bool) -> float:
    per_token_layer = 34.0 * shape.hidden  # bf16 working set of one block, fused attention
    total_tokens = sequences * tokens
    if checkpointing:
        kept = 2.0 * shape.hidden * total_tokens * shape.layers  # each block's input
        return kept + per_token_layer * total_tokens
    return per_token_layer * total_tokens * shape.layers


def _logits(shape: Shape, rows: int) -> float:
    return 2 * 4.0 * min(rows, LOGIT_CHUNK_ROWS) * shape.vocab  # fp32 logits and their gradient


def _kv_cache(shape: Shape, sequences: int, tokens: int) -> float:
    return 2 * 2.0 * shape.layers * shape.kv_heads * shape.head_dim * sequences * tokens


def _gathered(shape: Shape, bytes_per_weight: float = 2.0) -> float:
    """What a sharded rank holds whole at a time: the root unit and two decoder layers (bf16 for a policy,
    whose shards gather in its compute dtype; a reward model gathers its weights in their own dtype)."""
    layer = (shape.params - shape.embedding_params - shape.hidden) / shape.layers
    return bytes_per_weight * (shape.embedding_params + shape.hidden + 2 * layer)


def estimate(kind: str, mode: str, shape: Shape, work: Workload = Workload()) -> Estimate:
    """The memory one device needs to train ``shape`` as a ``kind`` run in ``mode``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if work.ranks < 1:
        raise ValueError(f"ranks must be at least 1, not {work.ranks}")
    rank, batch = work.lora_rank, work.share
    sharded = work.sharded and work.ranks > 1 and mode.startswith("full")
    split = work.ranks if sharded else 1
    weights, optimizer = _weights(shape, mode, rank) / split, _optimizer(shape, mode, rank) / split
    gathered = 4.0 if kind == "reward_model" and mode == "full-fp32" else 2.0
    other = _gathered(shape, gathered) if sharded else 0.0
    if kind == "dpo":  # chosen and rejected of each pair
        sequences, scored = 2 * batch, 2 * batch * work.length // 2
        activations = _activations(shape, sequences, work.length, work.gradient_checkpointing)
    elif kind == "reward_model":  # the scalar head reads one position: no vocab logits
        sequences, scored = 2 * batch, 0
        activations = _activations(shape, sequences, work.length, work.gradient_checkpointing)
    else:
        sequences, scored = batch, batch * work.new_tokens
        activations = max(_activations(shape, sequences, work.length, work.gradient_checkpointing),
                          _kv_cache(shape, sequences, work.length))
        if mode.startswith("full"):
            other += 2.0 * shape.params / split  # the frozen reference copy (sharded beside the policy)
            other += _gathered(shape) if sharded else 0.0  # and its root unit, gathered like the policy's
        other += 2.0 * (work.reward_shape or shape).params
    activations += _logits(shape, scored)
    base = weights + optimizer + activations + other
    return Estimate(weights, optimizer, activations, other, 2 * GIB + 0.10 * base)


def largest_fitting(kind: str, mode: str, budget_bytes: float, work: Workload = Workload(),
                    shapes: tuple[Shape, ...] = SHAPES) -> Shape | None:
    """The largest of ``shapes`` that fits ``budget_bytes`` (None: not even the smallest)."""
    fitting = [s for s in shapes if estimate(kind, mode, s, work).fits(budget_bytes)]
    return max(fitting, key=lambda s: s.params, default=None)


def choose_mode(kind: str, shape: Shape, budget_bytes: float, work: Workload = Workload(), *,
                qlora_available: bool = True) -> str | None:
    """The automatic choice: the first of full (fp32 master), full (bf16), LoRA, QLoRA that fits, or None.

    Full fine-tuning learns the most per step, so it wins whenever it fits; bf16 weights before
    adapters, adapters before a 4-bit base (which costs quality and speed).
    """
    for mode in MODES:
        if mode == "qlora" and not qlora_available:
            continue
        if estimate(kind, mode, shape, work).fits(budget_bytes):
            return mode
    return None


def table(budget_gb: float, work: Workload = Workload()) -> str:
    """A markdown table: the largest listed model per kind and mode on a GPU of ``budget_gb``
    (one of ``work.ranks``, full fine-tuning sharded where ``work.sharded``)."""
    budget = budget_gb * GIB
    names = {"dpo": "DPO", "ppo": "PPO", "reward_model": "reward model"}
    lines = [f"| mode | {' | '.join(names[k] for k in KINDS)} |", "|---|" + "---|" * len(KINDS)]
    for mode in MODES:
        cells = []
        for kind in KINDS:
            best = largest_fitting(kind, mode, budget, work)
            cells.append("none" if best is None else
                         f"{best.name} ({estimate(kind, mode, best, work).total / GIB:.0f} GiB)")
        lines.append(f"| {mode} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The largest model per kind and mode on one GPU, or on "
                                                 "each of a node's GPUs.")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="usable device memory, GiB")
    parser.add_argument("--gpus", type=int, default=1, help="processes, one per GPU (full fine-tuning sharded)")
    parser.add_argument("--batch", type=int, default=Workload.batch)
    parser.add_argument("--length", type=int, default=Workload.length)
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error("--gpus must be at least 1")
    work = Workload(batch=args.batch, length=args.length, gradient_checkpointing=not args.no_gradient_checkpointing,
                    ranks=args.gpus, sharded=args.gpus > 1)
    print(table(args.gpu_gb, work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
