"""BERT encoder (post-LN, absolute positions): MiniLM, all-MiniLM-L6-v2, BERT-base.

Module attributes mirror Hugging Face ``BertModel`` weight names
(``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, ...),
so a HF checkpoint loads strictly after ``sanitize``. Bidirectional: no cache,
no causal mask; padded batches take an additive key mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from .base import BaseModelArgs

# HF ``hidden_act`` names -> MLX functions. HF's "gelu" is the exact erf form.
ACTIVATIONS = {
    "gelu": nn.gelu,
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
}


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"[config] hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"[config] BERT hidden_act {self.hidden_act!r} is not supported; supported "
                f"values are {', '.join(ACTIVATIONS)}."
            )
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"[config] BERT position_embedding_type {self.position_embedding_type!r} is not "
                "supported; only 'absolute' is."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class Embeddings(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array) -> mx.array:
        L = input_ids.shape[1]
        h = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        h = h + self.position_embeddings(mx.arange(L))  # (L, H) broadcasts over B
        return self.LayerNorm(h)


class SelfAttention(nn.Module):
    """HF's ``attention.self``: the q/k/v projections and scaled dot-product attention."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.scale = args.head_dim**-0.5
        dim = args.hidden_size
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def __call__(self, x: mx.array, mask: Optional[mx.array]) -> mx.array:
        B, L, _ = x.shape
        q, k, v = (
            p(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)  # (B, H, L, D)
            for p in (self.query, self.key, self.value)
        )
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(B, L, -1)


class DenseLayerNorm(nn.Module):
    """HF's ``*.output``: ``LayerNorm(dense(x) + residual)`` (post-LN)."""

    def __init__(self, in_dims: int, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(in_dims, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        # "self" is HF's name for the attention core; nn.Module stores it as a dict key.
        self.self = SelfAttention(args)
        self.output = DenseLayerNorm(args.hidden_size, args)

    def __call__(self, x: mx.array, mask: Optional[mx.array]) -> mx.array:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.intermediate_size)
        self._act = ACTIVATIONS[args.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self._act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.intermediate = Intermediate(args)
        self.output = DenseLayerNorm(args.intermediate_size, args)

    def __call__(self, x: mx.array, mask: Optional[mx.array]) -> mx.array:
        h = self.attention(x, mask)
        return self.output(self.intermediate(h), h)


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layer = [Layer(args) for _ in range(args.num_hidden_layers)]

    def __call__(self, h: mx.array, mask: Optional[mx.array]) -> mx.array:
        for layer in self.layer:
            h = layer(h, mask)
        return h


def additive_key_mask(attention_mask: mx.array, dtype: mx.Dtype) -> mx.array:
    """(B, L) 1 = token / 0 = padding -> (B, 1, 1, L) additive mask (0 or dtype's min).

    The finite minimum (not -inf) keeps a fully padded row finite, as HF does.
    """
    keep = attention_mask.astype(mx.bool_)[:, None, None, :]
    return mx.where(keep, mx.array(0.0, dtype), mx.array(mx.finfo(dtype).min, dtype))


class Model(nn.Module):
    """Encoder only: ``model(input_ids, attention_mask=None, token_type_ids=None)``
    -> last hidden state (B, L, H). No pooler (sentence embeddings pool outside)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.embeddings = Embeddings(args)
        self.encoder = Encoder(args)

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: Optional[mx.array] = None,
        token_type_ids: Optional[mx.array] = None,
    ) -> mx.array:
        """Args: ``input_ids`` (B, L) ints; ``attention_mask`` (B, L), 1 = token,
        0 = padding (None: all tokens); ``token_type_ids`` (B, L) (None: zeros).

        Returns: (B, L, H); rows at padded positions are defined but meaningless.
        """
        L = input_ids.shape[1]
        if L > self.args.max_position_embeddings:
            raise ValueError(
                f"[bert] sequence length {L} exceeds max_position_embeddings "
                f"({self.args.max_position_embeddings}); truncate the input."
            )
        if token_type_ids is None:
            token_type_ids = mx.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids)
        mask = None if attention_mask is None else additive_key_mask(attention_mask, h.dtype)
        return self.encoder(h, mask)

    def sanitize(self, weights: dict) -> dict:
        """Strip the ``bert.`` prefix of task-head checkpoints; drop what is unused here:
        the pooler, task heads (``cls.``, ``classifier.``) and the ``position_ids`` buffer."""
        out = {}
        for k, v in weights.items():
            k = k.removeprefix("bert.")
            if k.startswith(("pooler.", "cls.", "classifier.")) or k.endswith("position_ids"):
                continue
            out[k] = v
        return out

    @property
    def layers(self):
        return self.encoder.layer
