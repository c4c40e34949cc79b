"""Phi-3 / Phi-3.5 / Phi-4-mini: fused ``qkv_proj`` and ``gate_up_proj`` weights."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.nn as nn

from . import llama


@dataclass
class ModelArgs(llama.ModelArgs):
    pass


class Attention(llama.Attention):
    def _make_projections(self, args: ModelArgs):
        out = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(args.hidden_size, out, bias=args.qkv_bias)


class MLP(llama.MLP):
    def __init__(self, args: ModelArgs):
        nn.Module.__init__(self)
        self.gate_up_proj = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)


class TransformerBlock(llama.TransformerBlock):
    attention_class = Attention
    mlp_class = MLP


class Model(llama.Model):
    block_class = TransformerBlock
