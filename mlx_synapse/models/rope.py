"""Rotary position embedding frequencies, shared by the MLX and NumPy backends.

Only NumPy is imported here so that the NumPy backend can use the same
frequencies without MLX. The MLX module that applies them lives in
``mlx_synapse.models.base``.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_type(scaling: Optional[dict]) -> str:
    """The rope type named by an HF ``rope_scaling`` dict (``None`` -> ``default``)."""
    if not scaling:
        return "default"
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"[rope] rope_scaling type {kind!r} is not supported; supported types are "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}. Remove 'rope_scaling' from config.json "
            "only if the model was trained without it."
        )
    return kind


def rope_inv_freq(head_dim: int, base: float, scaling: Optional[dict] = None) -> np.ndarray:
    """Inverse frequencies of RoPE for the non-interleaved (HF) convention.

    Args:
        head_dim: the rotated feature size (even).
        base: ``rope_theta``.
        scaling: the HF ``rope_scaling`` dict or ``None``.

    Returns:
        float32 array of shape ``(head_dim // 2,)``: angle = position * inv_freq.
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"[rope] head_dim must be a positive even number but got {head_dim}.")
    # Computed in float64 and rounded once, like the HF reference does in float32 ops.
    inv_freq = 1.0 / (float(base) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    kind = rope_type(scaling)
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        # Between the two wavelength bounds, interpolate between scaled and unscaled.
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rope_settings(config: dict) -> tuple[float, Optional[dict], float]:
    """``(rope_theta, rope_scaling, partial_rotary_factor)`` from an HF config dict.

    transformers >= 5 writes ``rope_parameters`` (theta, scaling and the
    partial rotary factor in one dict) where older versions wrote top-level
    ``rope_theta`` / ``rope_scaling``; read both.
    """
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", params.get("type", "default")) != "default":
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if rope_type(scaling) == "default":  # validates, with a clear message
        scaling = None
    partial = config.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)) or 1.0
    return float(theta), scaling, float(partial)
