"""Phi-3 / Phi-3.5 / Phi-4-mini: fused ``qkv_proj`` and ``gate_up_proj`` weights."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from . import llama


@dataclass
class ModelArgs(llama.ModelArgs):
    pass


class Attention(llama.Attention):
    def _make_projections(self, args: ModelArgs):
        hd = self.head_dim
        self._q_rows = self.n_heads * hd
        self._kv_rows = self.n_kv_heads * hd
        out = self._q_rows + 2 * self._kv_rows
        self.qkv_proj = nn.Linear(args.hidden_size, out, bias=args.qkv_bias)

    def _project(self, x: mx.array):
        qkv = self.qkv_proj(x)
        q_end = self._q_rows
        return qkv[..., :q_end], qkv[..., q_end : q_end + self._kv_rows], qkv[..., q_end + self._kv_rows :]


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_up_proj = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)  # gate rows come first
        return self.down_proj(nn.silu(gate) * up)


class TransformerBlock(llama.TransformerBlock):
    attention_class = Attention
    mlp_class = MLP


class Model(llama.Model):
    block_class = TransformerBlock
