"""Validation and vector encoding of memory-store rows (no SQL here).

Every value that reaches :mod:`mlx_synapse.memory.store` passes these checks
first, so a bad row is refused before any transaction starts.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
from typing import List, Optional, Tuple

import numpy as np

from .int8 import dequantize, quantize

TIERS = ("hot", "warm", "cold")
MAX_DIM = 1 << 16
MAX_SCALE = float(np.finfo(np.float32).max) / 127  # an int8 row's largest usable scale


def _err(where: str, msg: str) -> ValueError:
    return ValueError(f"[memory.store] {where}{msg}")


def _check_str(value, what: str, where: str, *, max_bytes: int, nonblank: bool) -> str:
    if not isinstance(value, str):
        raise _err(where, f"{what} must be a str but got {type(value).__name__}.")
    if nonblank and not value.strip():
        raise _err(where, f"{what} must be non-empty (and not only whitespace).")
    if len(value) > max_bytes:  # every character is at least one byte
        raise _err(where, f"{what} is {len(value)} characters, over the {max_bytes}-byte limit.")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise _err(
            where,
            f"{what} is not valid UTF-8: lone surrogate {value[e.start]!r} at character {e.start}.",
        ) from None
    if n > max_bytes:
        raise _err(where, f"{what} is {n} bytes of UTF-8, over the {max_bytes}-byte limit.")
    return value


def _check_json_value(v, what: str, where: str, depth: int = 0) -> None:
    if depth > 64:
        raise _err(where, f"{what} is nested more than 64 levels deep.")
    if v is None or isinstance(v, (bool, int)):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _err(where, f"{what} contains a non-finite float {v!r} (not valid JSON).")
        return
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _err(where, f"{what} contains a string with a lone surrogate {v[e.start]!r}.") from None
        return
    if isinstance(v, (list, tuple)):
        for x in v:
            _check_json_value(x, what, where, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise _err(where, f"{what} has a non-str key {k!r}; JSON keys are strings.")
            _check_json_value(k, what, where, depth + 1)
            _check_json_value(x, what, where, depth + 1)
        return
    raise _err(
        where,
        f"{what} contains a {type(v).__name__}, which is not JSON (use dict, list, str, int, float, bool, None).",
    )


def _to_json(v, what: str, where: str, max_bytes: int) -> str:
    _check_json_value(v, what, where)
    s = json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if len(s.encode("utf-8")) > max_bytes:
        raise _err(where, f"{what} is over the {max_bytes}-byte limit as JSON.")
    return s


def _check_real(v, what: str, where: str, *, nonneg: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise _err(where, f"{what} must be a real number but got {type(v).__name__}.")
    f = float(v)
    if not math.isfinite(f):
        raise _err(where, f"{what} must be finite but got {f!r}.")
    if nonneg and f < 0:
        raise _err(where, f"{what} must be >= 0 but got {f!r}.")
    return f


def _check_int(v, what: str, where: str) -> int:
    if isinstance(v, bool):
        raise _err(where, f"{what} must be an int but got bool.")
    try:
        i = operator.index(v)
    except TypeError:
        raise _err(where, f"{what} must be an int but got {type(v).__name__}.") from None
    if not -(2**63) <= i < 2**63:
        raise _err(where, f"{what} {i} is outside SQLite's 64-bit integer range.")
    return i


def _check_tier(v, where: str) -> str:
    if v not in TIERS:
        raise _err(where, f"tier must be one of {TIERS} but got {v!r}.")
    return v


def _encode_vector(
    vector, scale, tier: str, dim, where: str
) -> Tuple[Optional[bytes], Optional[float], Optional[int]]:
    """``(blob, scale, dim)`` for storage: float16 bytes for 'hot', int8 bytes + scale otherwise."""
    if dim is not None:
        dim = _check_int(dim, "dim", where)
        if not 0 < dim <= MAX_DIM:
            raise _err(where, f"dim must be in [1, {MAX_DIM}] but got {dim}.")
    if vector is None:
        if scale is not None:
            raise _err(where, "scale was given without a vector.")
        return None, None, dim
    a = np.asarray(vector)
    if a.ndim != 1 or not 0 < a.shape[0] <= MAX_DIM:
        raise _err(where, f"vector must be 1-D with 1..{MAX_DIM} elements but got shape {a.shape}.")
    if dim is not None and dim != a.shape[0]:
        raise _err(where, f"dim is {dim} but the vector has {a.shape[0]} elements.")
    if a.dtype == np.int8:
        if scale is None:
            raise _err(where, "an int8 vector needs its scale (see mlx_synapse.memory.int8.quantize).")
        s = _check_real(scale, "scale", where, nonneg=True)
        if s > MAX_SCALE:  # codes * scale would overflow float32 in the index
            raise _err(where, f"scale {s!r} is over {MAX_SCALE:.4g} (float32's max / 127); "
                              f"re-quantize the vector (mlx_synapse.memory.int8.quantize).")
        if tier == "hot":
            f = dequantize(a[None, :], np.float32(s))[0]
            return _to_f16(f, where), None, a.shape[0]
        return a.tobytes(), s, a.shape[0]
    if scale is not None:
        raise _err(where, f"scale is only for int8 vectors, not {a.dtype}.")
    if a.dtype.kind not in "fiu":
        raise _err(where, f"vector must be real numbers but got dtype {a.dtype}.")
    if tier == "hot":
        return _to_f16(a, where), None, a.shape[0]
    try:
        q, s = quantize(a[None, :])
    except ValueError as e:
        raise _err(where, f"vector: {e}") from None
    return q[0].tobytes(), float(s[0]), a.shape[0]


def _to_f16(a: np.ndarray, where: str) -> bytes:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise _err(where, "vector has a NaN or infinite value.")
    with np.errstate(over="ignore", invalid="ignore"):
        h = a.astype("<f2")
    if not np.isfinite(h).all():
        raise _err(where, "vector has a value beyond float16's range (|x| > 65504) for a 'hot' entry.")
    return h.tobytes()


def _decode_vector(blob: Optional[bytes], scale: Optional[float]) -> Optional[np.ndarray]:
    if blob is None:
        return None
    if scale is None:
        return np.frombuffer(blob, dtype="<f2").astype(np.float16)
    return np.frombuffer(blob, dtype=np.int8).copy()


def _ids_of(ids) -> List[int]:
    if isinstance(ids, (numbers.Integral, np.integer)):
        ids = [ids]
    elif isinstance(ids, np.ndarray):
        ids = ids.reshape(-1).tolist()
    return [_check_int(i, "id", "") for i in ids]


# ----------------------------------------------------------------------------- store


def _check_optional_str(value, what: str, where: str, *, max_bytes: int, nonblank: bool) -> Optional[str]:
    """``None`` stays ``None``; anything else must pass :func:`_check_str`."""
    return None if value is None else _check_str(value, what, where, max_bytes=max_bytes, nonblank=nonblank)
