"""Row-split linear layers that run on several MLX CPU streams at once.

MLX's CPU backend runs each matrix product on one thread. Splitting a
layer's output rows into parts, one per CPU stream, lets the parts run on
different cores; measured on a 2-core EPYC with SmolLM2-135M in bfloat16,
decode went from 7.8 to 10.1 tokens/s and prefill from 22.5 to 32.1 (the
loader now expands to float32 on the CPU; the split applies to it alike).
On a GPU one stream is already parallel, so this is for CPU runs only.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn


class RowSplitLinear(nn.Module):
    """``y = x @ W.T + b`` with W's rows split over CPU streams (inference only).

    Args:
        weight: (out, in) float weights; parts are row views of it, not copies.
        bias: (out,) or None.
        streams: one CPU stream per part.
    """

    def __init__(self, weight: mx.array, bias: Optional[mx.array], streams: list):
        super().__init__()
        rows = weight.shape[0]
        step = -(-rows // len(streams))
        bounds = [(i, min(i + step, rows)) for i in range(0, rows, step)]
        self.parts = [weight[a:b] for a, b in bounds]
        if bias is not None:
            self.bias_parts = [bias[a:b] for a, b in bounds]
        self._streams = streams[: len(bounds)]

    def __call__(self, x: mx.array) -> mx.array:
        outs = []
        for i, (w, s) in enumerate(zip(self.parts, self._streams)):
            y = mx.matmul(x, w.T, stream=s)
            if "bias_parts" in self:
                y = mx.add(y, self.bias_parts[i], stream=s)
            outs.append(y)
        return mx.concatenate(outs, axis=-1)


def split_rows_across_cpu_streams(model: nn.Module, n_streams: int) -> None:
    """Replace the float Linear layers of every block, and the output head, by
    :class:`RowSplitLinear` over ``n_streams`` CPU streams.

    A tied model gets an ``lm_head`` made of row views of its embedding.
    """
    if n_streams < 2:
        return
    streams = [mx.new_stream(mx.cpu) for _ in range(n_streams)]

    def split(parent: nn.Module) -> None:
        for name, child in list(parent.children().items()):
            if type(child) is nn.Linear:
                parent[name] = RowSplitLinear(child.weight, child.get("bias"), streams)

    for layer in model.layers:
        split(layer.self_attn)
        split(layer.mlp)
    if "lm_head" in model:
        split(model)
    elif type(model.model.embed_tokens) is nn.Embedding:
        model.lm_head = RowSplitLinear(model.model.embed_tokens.weight, None, streams)
