"""Llama-family decoder (Llama 2/3/3.1/3.2, SmolLM/SmolLM2, Mistral).

Module attributes mirror Hugging Face weight names, so a HF or mlx-lm
checkpoint loads with no mapping table. ``qwen2``, ``qwen3`` and ``phi3``
reuse these blocks and change only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from .base import BaseModelArgs, RoPE, attention, create_attention_mask


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    partial_rotary_factor: float = 1.0
    tie_word_embeddings: bool = False
    max_position_embeddings: Optional[int] = None

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"[config] num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})."
            )

    # What differs between the family members, as properties a subclass overrides.
    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def qk_norm(self) -> bool:
        return False


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.head_dim = hd = args.head_dim
        self.scale = hd**-0.5
        self._make_projections(args)
        if args.qk_norm:
            self.q_norm = nn.RMSNorm(hd, eps=args.rms_norm_eps)
            self.k_norm = nn.RMSNorm(hd, eps=args.rms_norm_eps)
        self.o_proj = nn.Linear(self.n_heads * hd, args.hidden_size, bias=args.o_bias)
        rot = int(hd * args.partial_rotary_factor)
        self.rope = RoPE(rot, args.rope_theta, args.rope_scaling)

    def _make_projections(self, args: ModelArgs):
        dim, hd = args.hidden_size, self.head_dim
        self.q_proj = nn.Linear(dim, self.n_heads * hd, bias=args.qkv_bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=args.qkv_bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=args.qkv_bias)

    def _project(self, x: mx.array):
        if "qkv_proj" in self:  # fused (phi3 checkpoints, or fuse_projections at load)
            qkv = self.qkv_proj(x)
            q_end, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return qkv[..., :q_end], qkv[..., q_end : q_end + kv], qkv[..., q_end + kv :]
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        B, L, _ = x.shape
        q, k, v = self._project(x)
        q = q.reshape(B, L, self.n_heads, -1)
        k = k.reshape(B, L, self.n_kv_heads, -1)
        if "q_norm" in self:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(0, 2, 1, 3)  # (B, H, L, D)
        k = k.transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = attention(q, k, v, cache, self.scale, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, hidden, bias = args.hidden_size, args.intermediate_size, args.mlp_bias
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        if "gate_up_proj" in self:  # fused: gate rows come first
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(nn.silu(gate) * up)


def _fuse_linears(parent: nn.Module, names: tuple, fused_name: str) -> bool:
    """Replace float Linear children ``names`` of ``parent`` by one Linear stacking their rows."""
    parts = [parent[n] for n in names]
    if not all(type(p) is nn.Linear for p in parts):
        return False  # quantized layers stay as they are
    fused = nn.Linear(1, 1, bias="bias" in parts[0])
    fused.weight = mx.concatenate([p.weight for p in parts], axis=0)
    if "bias" in parts[0]:
        fused.bias = mx.concatenate([p.bias for p in parts], axis=0)
    for n in names:
        parent.pop(n)
    parent[fused_name] = fused
    return True


def fuse_projections(model: nn.Module) -> None:
    """Stack q|k|v and gate|up weights into single matmuls (inference only).

    Fewer, larger matmuls per layer run faster on MLX's CPU backend. The fused
    model keeps phi3's parameter names, so it is not for saving.
    """
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if "q_proj" in attn:
            _fuse_linears(attn, ("q_proj", "k_proj", "v_proj"), "qkv_proj")
        if "gate_proj" in mlp:
            _fuse_linears(mlp, ("gate_proj", "up_proj"), "gate_up_proj")


class TransformerBlock(nn.Module):
    attention_class = Attention
    mlp_class = MLP

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = self.attention_class(args)
        self.mlp = self.mlp_class(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs, block_class=TransformerBlock):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [block_class(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(
        self, inputs: mx.array, cache: Optional[list] = None, mask: Any = None,
        input_embeddings: Optional[mx.array] = None,
    ) -> mx.array:
        h = self.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        cache = cache if cache is not None else [None] * len(self.layers)
        if mask is None:
            mask = create_attention_mask(h, cache[0])
        for layer, c in zip(self.layers, cache):
            h = layer(h, mask, c)
        return self.norm(h)


class Model(nn.Module):
    """Causal LM: ``model(tokens (B, L), cache=None, mask=None) -> logits (B, L, V)``."""

    block_class = TransformerBlock

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = LlamaModel(args, self.block_class)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(
        self, inputs: mx.array, cache: Optional[list] = None, mask: Any = None,
        input_embeddings: Optional[mx.array] = None,
    ) -> mx.array:
        h = self.model(inputs, cache, mask, input_embeddings)
        if "lm_head" in self:  # untied, or a tied head split for CPU streams
            return self.lm_head(h)
        return self.model.embed_tokens.as_linear(h)

    def hidden_states(self, inputs: mx.array, layer: int = -1) -> mx.array:
        """Hidden state after block ``layer`` (negative counts from the end), (B, L, D)."""
        h = self.model.embed_tokens(inputs)
        mask = create_attention_mask(h)
        stop = layer % len(self.layers)
        for i, block in enumerate(self.layers[: stop + 1]):
            h = block(h, mask)
        return self.model.norm(h) if stop == len(self.layers) - 1 else h

    def sanitize(self, weights: dict) -> dict:
        """Drop tensors HF checkpoints carry that this model derives itself."""
        out = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            out = {k: v for k, v in out.items() if not k.startswith("lm_head.")}
        return out

    @property
    def layers(self):
        return self.model.layers
