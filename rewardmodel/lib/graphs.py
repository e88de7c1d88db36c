"""Training steps replayed from CUDA graphs.

A reward-model step on a small batch is bound by the CPU that launches its
kernels, not by the GPU: on an H100, a SmolLM2-135M step at batch 16 launched
about 3,900 kernels, about 90 ms of CPU against 75 ms of GPU work
(docs/benchmarks.md). A CUDA graph records those launches once and replays
them with one call.

`GraphedSteps` wraps a step function (forward, loss, backward, clipping,
optimizer step) that takes and returns dicts of tensors. The first `warmup`
calls run eagerly on a side stream; they are real steps, and they create the
optimizer state and let lazy library setup happen outside a capture. After
that, the first call with a new input shape captures a graph for it (the
capture runs nothing, so the graph is replayed at once to do that step), and
later calls with that shape copy their inputs into the graph's own tensors
and replay it. All graphs share one memory pool: only one runs at a time, and
each call's outputs are copied out before the next replay.

What the step function must keep to: no reading of GPU values on the CPU (no
`.item()`, no data-dependent shapes), gradients set to None at its start, an
optimizer built with `capturable=True` (and a tensor learning rate that is
changed in place), autocast without its weight cache. If a capture still
fails, the error is logged once and every later step runs eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


class GraphedSteps:
    """Call with a dict of input tensors; returns the step's output tensors (fresh copies)."""

    def __init__(self, step: Callable[[Tensors], Tensors], *, warmup: int = 2) -> None:
        self.step = step
        self.warmup = warmup
        self.eager_steps = 0
        self.replays = 0
        self.failed: str | None = None
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensors, Tensors]] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self._side = torch.cuda.Stream()

    @property
    def shapes(self) -> int:
        """How many graphs were captured (one per input shape)."""
        return len(self._graphs)

    def __call__(self, inputs: Tensors) -> Tensors:
        key = tuple((name, tuple(t.shape), t.dtype) for name, t in sorted(inputs.items()))
        entry = self._graphs.get(key)
        if entry is None:
            if self.failed is not None or self.eager_steps < self.warmup:
                return self.eager(inputs)
            entry = self._capture(key, inputs)
            if entry is None:
                return self.eager(inputs)
        else:
            for name, static in entry[1].items():
                static.copy_(inputs[name], non_blocking=True)
        graph, _, outputs = entry
        graph.replay()
        self.replays += 1
        return {name: t.clone() for name, t in outputs.items()}

    def eager(self, inputs: Tensors) -> Tensors:
        """Run the step without a graph (warm-up, or a shape seen once), ordered with the graphs."""
        self.eager_steps += 1
        current = torch.cuda.current_stream()
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            outputs = self.step(inputs)
        current.wait_stream(self._side)
        return outputs

    def _capture(self, key: tuple, inputs: Tensors) -> tuple[torch.cuda.CUDAGraph, Tensors, Tensors] | None:
        static = {name: t.clone() for name, t in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            # "thread_local": the training loop's helper thread lays out the next batch meanwhile
            # (its own allocations and copies, on another stream), which a global capture would refuse.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                outputs = self.step(static)
        except Exception as error:  # noqa: BLE001 - any capture failure falls back to eager steps
            self.failed = f"{type(error).__name__}: {error}"
            log.warning("CUDA graph capture failed, training on without graphs: %s", self.failed)
            torch.cuda.synchronize()
            return None
        self._graphs[key] = (graph, static, outputs)
        return self._graphs[key]
