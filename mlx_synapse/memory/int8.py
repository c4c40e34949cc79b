"""Per-entry symmetric INT8 quantization of embedding vectors.

Each row ``v`` of an ``(N, D)`` matrix is stored as ``q = round(v / s)`` in int8
with one float32 scale ``s`` per row, ``s ~= max|v| / 127``, so that
``dequantize(q, s) = q * s`` is within ``s / 2`` of ``v`` in every element (plus
float32 rounding of the product). A zero row gets ``s = 0`` and ``q = 0``; it
dequantizes to exact zeros, never NaN. The range is symmetric: ``q`` lies in
``[-127, 127]`` (``-128`` is never produced).

The scale is the float32 nearest ``max|v| / 127``, nudged up by one ulp where
rounding made ``127 * s < max|v|`` (which happens among subnormals), so that no
element is ever clipped and the ``s / 2`` bound holds for every finite float32
input, huge or tiny.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["quantize", "dequantize", "QMAX"]

QMAX = 127
_F32_MAX = float(np.finfo(np.float32).max)


def _as_matrix(v, what: str) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 2:
        raise ValueError(f"[int8] {what} must be a 2-D (N, D) array but got shape {a.shape}.")
    if a.shape[1] < 1:
        raise ValueError(f"[int8] {what} must have D >= 1 columns but got shape {a.shape}.")
    return a


def quantize(v) -> Tuple[np.ndarray, np.ndarray]:
    """Quantize the rows of a float ``(N, D)`` matrix: ``(q int8 (N, D), scale float32 (N,))``.

    Raises ``ValueError`` for a non-2-D input, ``D == 0``, a non-real dtype, or any
    NaN / infinity (including float64 values beyond the float32 range).
    """
    a = _as_matrix(v, "quantize input")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"[int8] quantize needs a real numeric array but got dtype {a.dtype}.")
    with np.errstate(over="ignore", invalid="ignore"):
        x = a.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise ValueError(
            f"[int8] quantize input has a non-finite value (NaN, inf, or beyond the float32 "
            f"range) at row {r}, column {c}: {a[r, c]!r}."
        )
    n, d = x.shape
    if n == 0:
        return np.zeros((0, d), np.int8), np.zeros((0,), np.float32)

    amax = np.abs(x).max(axis=1).astype(np.float64)  # exact: float32 -> float64
    scale = (amax / QMAX).astype(np.float32)
    # Make 127 * scale >= amax exactly (float32 * 127 is exact in float64), so nothing clips.
    short = scale.astype(np.float64) * QMAX < amax
    if short.any():
        scale[short] = np.nextafter(scale[short], np.float32(np.inf))
    s64 = scale.astype(np.float64)
    safe = np.where(s64 > 0, s64, 1.0)
    q = np.rint(x.astype(np.float64) / safe[:, None])
    np.clip(q, -QMAX, QMAX, out=q)
    return q.astype(np.int8), scale


def dequantize(q, scale) -> np.ndarray:
    """``q * scale`` row by row as float32 ``(N, D)``; the inverse of :func:`quantize`.

    ``q`` must be an int8 ``(N, D)`` array and ``scale`` ``N`` finite, non-negative
    scales (a 0-d scale is accepted for ``N == 1``).
    """
    qa = _as_matrix(q, "dequantize codes")
    if qa.dtype != np.int8:
        raise ValueError(f"[int8] dequantize needs int8 codes but got dtype {qa.dtype}.")
    s = np.asarray(scale)
    if s.dtype.kind not in "fiu":
        raise ValueError(f"[int8] dequantize needs real scales but got dtype {s.dtype}.")
    s = s.astype(np.float32).reshape(-1) if s.ndim == 0 else s.astype(np.float32, copy=False)
    if s.ndim != 1 or s.shape[0] != qa.shape[0]:
        raise ValueError(
            f"[int8] dequantize needs one scale per row: codes have shape {qa.shape} "
            f"but scales have shape {np.shape(scale)}."
        )
    if not (np.isfinite(s).all() and (s >= 0).all()):
        raise ValueError("[int8] dequantize scales must be finite and >= 0.")
    with np.errstate(over="ignore"):
        out = qa.astype(np.float32) * s[:, None]
    # 127 * scale may round just past float32's max for inputs at the very top of the range.
    if not np.isfinite(out).all():
        np.clip(out, -_F32_MAX, _F32_MAX, out=out)
    return out
