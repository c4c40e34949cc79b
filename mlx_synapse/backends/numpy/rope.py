"""Rotary position embeddings (HF "rotate_half" convention), NumPy only.

The inverse frequencies are the MLX models' own (``models/rope.py`` imports
only NumPy), so both backends rotate identically.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...models.rope import rope_inv_freq


class Rope:
    """RoPE tables indexed by absolute position, grown on demand.

    Rotation is applied as ``x * cos_full + x[..., perm] * sin_signed`` where
    ``cos_full = [cos, cos]``, ``sin_signed = [-sin, sin]`` and ``perm`` swaps
    the two halves of the rotary dims (identity, cos 1, sin 0 on the
    pass-through dims of a partial rotary): four NumPy ops per call.
    """

    def __init__(self, head_dim: int, rotary_dim: int, base: float, scaling: Optional[dict], initial: int = 2048):
        self.head_dim = head_dim
        self.dim = rotary_dim
        half = rotary_dim // 2
        self.inv_freq = rope_inv_freq(rotary_dim, base, scaling).astype(np.float64)
        perm = np.arange(head_dim)
        perm[:half] += half
        perm[half:rotary_dim] -= half
        self.perm = perm
        self._cos = np.empty((0, head_dim), np.float32)
        self._sin = np.empty((0, head_dim), np.float32)
        self._grow(initial)

    def _grow(self, n: int) -> None:
        n = max(n, 2 * len(self._cos))
        half, d = self.dim // 2, self.head_dim
        ang = np.arange(n, dtype=np.float64)[:, None] * self.inv_freq[None, :]
        c, s = np.cos(ang), np.sin(ang)
        cos = np.ones((n, d), np.float32)
        sin = np.zeros((n, d), np.float32)
        cos[:, :half] = c
        cos[:, half : self.dim] = c
        sin[:, :half] = -s
        sin[:, half : self.dim] = s
        self._cos, self._sin = cos, sin

    def tables(self, offset: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """cos_full, sin_signed for positions offset..offset+n-1: shape (n, 1, head_dim)."""
        if offset + n > len(self._cos):
            self._grow(offset + n)
        return self._cos[offset : offset + n, None], self._sin[offset : offset + n, None]

    def apply(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Rotate ``x`` (..., heads, head_dim) in place; cos/sin broadcast against it."""
        if self.dim == self.head_dim:
            # swapping the two halves is a negative-stride view: no gather needed
            half = self.dim // 2
            swapped = x.reshape(x.shape[:-1] + (2, half))[..., ::-1, :]
            t = swapped * sin.reshape(sin.shape[:-1] + (2, half))
            x *= cos
            x += t.reshape(x.shape)
            return x
        t = x[..., self.perm]
        t *= sin
        x *= cos
        x += t
        return x
