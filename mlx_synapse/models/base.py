"""Pieces every MLX architecture shares: config parsing, RoPE, masks, attention."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional, Union

import mlx.core as mx
import mlx.nn as nn

from .rope import rope_inv_freq, rope_settings


@dataclass
class BaseModelArgs:
    """Config dataclass with Hugging Face field names."""

    @classmethod
    def from_dict(cls, params: dict):
        """Build from a ``config.json`` dict, ignoring keys the class does not know."""
        known = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in params.items() if k in known}
        if "rope_theta" in known:
            theta, scaling, partial = rope_settings(params)
            kwargs.update(rope_theta=theta, rope_scaling=scaling)
            if "partial_rotary_factor" in known:
                kwargs["partial_rotary_factor"] = partial
        missing = [
            name
            for name, p in known.items()
            if p.default is inspect.Parameter.empty and name not in kwargs
        ]
        if missing:
            raise ValueError(
                f"[config] config.json lacks required field(s) {', '.join(missing)} for "
                f"model_type {params.get('model_type')!r}; the file is incomplete — "
                "re-download or re-convert the checkpoint."
            )
        return cls(**kwargs)


class RoPE(nn.Module):
    """Rotary embedding (HF non-interleaved convention) over the first ``dims`` features."""

    def __init__(self, dims: int, base: float, scaling: Optional[dict] = None):
        super().__init__()
        self.dims = dims
        # mx.fast.rope takes periods (1 / inverse frequency); leading underscore keeps
        # them out of the parameters.
        self._freqs = mx.array(1.0 / rope_inv_freq(dims, base, scaling))

    def __call__(self, x: mx.array, offset: Union[int, mx.array] = 0) -> mx.array:
        return mx.fast.rope(
            x, self.dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._freqs
        )


def create_attention_mask(h: mx.array, cache: Any = None) -> Union[None, str, mx.array]:
    """The mask for ``h`` of shape (B, L, D) given the first layer's cache."""
    L = h.shape[1]
    if cache is not None and hasattr(cache, "make_mask"):
        return cache.make_mask(L)
    return "causal" if L > 1 else None


def quantized_attention(
    queries: mx.array,
    q_keys: tuple,
    q_values: tuple,
    scale: float,
    mask: Union[None, str, mx.array],
    group_size: int,
    bits: int,
) -> mx.array:
    """Attention over an affine-quantized KV cache (keys/values as (w, scales, biases))."""
    B, n_heads, L, D = queries.shape
    n_kv = q_keys[0].shape[-3]
    rep = n_heads // n_kv
    queries = queries * scale
    if rep > 1:
        queries = queries.reshape(B, n_kv, rep, L, D)  # (B, Hkv, G, L, D)
        q_keys = tuple(mx.expand_dims(x, -3) for x in q_keys)
        q_values = tuple(mx.expand_dims(x, -3) for x in q_values)
    scores = mx.quantized_matmul(queries, *q_keys, transpose=True, group_size=group_size, bits=bits)
    if isinstance(mask, str):
        qL, kL = scores.shape[-2:]
        mask = mx.arange(kL - qL, kL)[:, None] >= mx.arange(kL)[None]
    if mask is not None:
        scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
    scores = mx.softmax(scores, axis=-1, precise=True)
    out = mx.quantized_matmul(scores, *q_values, transpose=False, group_size=group_size, bits=bits)
    return out.reshape(B, n_heads, L, D) if rep > 1 else out


def attention(
    queries: mx.array,
    keys: Any,
    values: Any,
    cache: Any,
    scale: float,
    mask: Union[None, str, mx.array],
) -> mx.array:
    """Scaled dot-product attention, quantized when the cache holds quantized K/V."""
    if getattr(cache, "bits", None):
        return quantized_attention(
            queries, keys, values, scale, mask, group_size=cache.group_size, bits=cache.bits
        )
    return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
