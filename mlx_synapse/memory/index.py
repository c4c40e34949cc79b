"""The memory bank's vector index: INT8 rows, cosine top-k as one matrix product.

Storage is contiguous NumPy arrays that double their capacity when full
(amortised O(1) append), a dict id -> row, and removal by moving the last row
into the hole, so rows ``[0, len)`` are always dense.  Each row keeps its int8
codes, its scale (``memory.int8``) and ``1 / ||codes||`` (the cosine needs only
codes and that; see ``mlx_synapse.kernels.int8_search``).

Backends: ``numpy`` searches with the numba kernel (pure NumPy + BLAS when numba
is missing); ``mlx`` keeps an MLX mirror in the affine 8-bit layout, repacked
lazily block by block on the next search after a mutation.
"""

from __future__ import annotations

import threading
from typing import Optional, Tuple

import numpy as np

from ..kernels import int8_search as ks
from ..loader import resolve_backend
from .int8 import quantize

__all__ = ["VectorIndex"]

_MIN_CAPACITY = 64


def _err(msg: str) -> ValueError:
    return ValueError(f"[memory.index] {msg}")


def _as_ids(ids, what: str) -> np.ndarray:
    """``ids`` (a scalar or 1-D integers) as int64 ``(n,)``."""
    a = np.asarray(ids)
    if a.size == 0 and a.ndim <= 1:
        return np.zeros(0, np.int64)  # [] arrives as float64
    if a.dtype.kind not in "iu" or a.dtype == np.bool_:
        raise _err(f"{what} must be integers but got dtype {a.dtype}; pass e.g. np.asarray(ids, np.int64).")
    if a.ndim > 1:
        raise _err(f"{what} must be a scalar or a 1-D array but got shape {a.shape}.")
    if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
        raise _err(f"{what} must fit in int64 but got {a.max()}.")
    return np.atleast_1d(a).astype(np.int64, copy=False)


class VectorIndex:
    """In-memory INT8 cosine index over one vector space (the bank keeps one per user).

    Args:
        dim: width of the vectors.
        backend: ``"auto"`` (MLX where it has a GPU, else NumPy), ``"mlx"`` or ``"numpy"``.

    Ids are non-negative int64 (``-1`` pads 2-D search results).  A lock makes
    one writer and concurrent searches safe.
    """

    def __init__(self, dim: int, backend: str = "auto"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise _err(f"dim must be a positive int but got {dim!r}.")
        self.dim = int(dim)
        self.backend = resolve_backend(backend)
        self._lock = threading.RLock()
        self._n = 0
        self._codes = np.zeros((0, self.dim), np.int8)
        self._scales = np.zeros(0, np.float32)
        self._inv_norm = np.zeros(0, np.float32)
        self._ids = np.zeros(0, np.int64)
        self._row = {}  # id -> row
        self._mirror = ks.AffineInt8Mirror(self.dim) if self.backend == "mlx" else None

    # ---- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __contains__(self, id) -> bool:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            return False
        return int(id) in self._row

    def ids(self) -> np.ndarray:
        """The current ids, int64, in row order (which removals permute)."""
        with self._lock:
            return self._ids[: self._n].copy()

    def get_vectors(self, ids) -> Tuple[np.ndarray, np.ndarray]:
        """``(codes int8 (m, dim), scales float32 (m,))`` for ``ids``; KeyError for an absent id."""
        ids = _as_ids(ids, "get_vectors ids")
        with self._lock:
            missing = [int(i) for i in ids if int(i) not in self._row]
            if missing:
                raise KeyError(f"[memory.index] ids not in the index: {missing[:10]}")
            rows = np.fromiter((self._row[int(i)] for i in ids), np.int64, len(ids))
            return self._codes[rows].copy(), self._scales[rows].copy()

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the rows (codes, scales, norms, ids; capacity, not length), MLX copy included."""
        held = self._codes.nbytes + self._scales.nbytes + self._inv_norm.nbytes + self._ids.nbytes
        return held + (self._mirror.nbytes if self._mirror is not None else 0)

    # ---- writing ---------------------------------------------------------------

    def add(self, ids, codes, scales) -> None:
        """Insert or replace rows: ids ``(n,)``, codes int8 ``(n, dim)``, scales ``(n,)``.

        Everything is validated before anything changes.  An id already present is
        replaced; an id twice in one call is an error.
        """
        ids = _as_ids(ids, "add ids")
        codes = np.asarray(codes)
        if codes.ndim == 1 and len(ids) == 1:
            codes = codes[None]
        if codes.dtype != np.int8:
            raise _err(f"codes must be int8 but got dtype {codes.dtype}; quantize float vectors with "
                       "memory.int8.quantize or call add_vectors.")
        if codes.ndim != 2 or codes.shape[1] != self.dim:
            raise _err(f"codes must have shape (n, {self.dim}) for this index but got {codes.shape}.")
        scales = np.atleast_1d(np.asarray(scales))
        if scales.dtype.kind not in "fiu":
            raise _err(f"scales must be real numbers but got dtype {scales.dtype}.")
        if not (len(ids) == codes.shape[0] == scales.shape[0]) or scales.ndim != 1:
            raise _err(f"ids {ids.shape}, codes {codes.shape} and scales {scales.shape} must describe "
                       "the same n rows: (n,), (n, dim), (n,).")
        self._check_ids(ids)
        with np.errstate(over="ignore", invalid="ignore"):
            scales = scales.astype(np.float32)  # beyond float32's range -> inf -> refused below
        bad = ~np.isfinite(scales) | (scales < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _err(f"scales must be finite and >= 0 but row {i} (id {ids[i]}) has {scales[i]!r}.")
        inv = ks.inv_norms(codes)
        inv[scales == 0] = 0.0  # a zero scale dequantizes to a zero vector: score 0
        with self._lock:
            self._write(ids, np.ascontiguousarray(codes), scales, inv)

    def add_vectors(self, ids, vectors) -> None:
        """Quantize float ``(n, dim)`` vectors with ``memory.int8.quantize`` and :meth:`add` them."""
        v = np.asarray(vectors)
        if v.ndim == 1:
            v = v[None]
        if v.dtype.kind not in "fiu" or v.dtype == np.bool_:
            raise _err(f"vectors must be real numbers but got dtype {v.dtype}.")
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise _err(f"vectors must have shape (n, {self.dim}) for this index but got {v.shape}.")
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(v.astype(np.float32))
        if not finite.all():
            r = int(np.argwhere(~finite)[0][0])
            raise _err(f"vectors must be finite (and within float32 range) but row {r} is not.")
        codes, scales = quantize(v)
        self.add(ids, codes, scales)

    def remove(self, ids) -> int:
        """Remove ``ids`` (absent ones ignored); returns how many were removed."""
        ids = _as_ids(ids, "remove ids")
        removed = 0
        with self._lock:
            for i in ids.tolist():
                row = self._row.pop(i, None)
                if row is None:
                    continue
                last = self._n - 1
                if row != last:  # move the last row into the hole
                    for a in (self._codes, self._scales, self._inv_norm, self._ids):
                        a[row] = a[last]
                    self._row[int(self._ids[row])] = row
                    if self._mirror is not None:
                        self._mirror.mark_rows(row)
                self._n = last
                removed += 1
        return removed

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and ids.min() < 0:
            raise _err(f"ids must be >= 0 (-1 marks padding in search results) but got {int(ids.min())}.")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise _err(f"ids must be unique within one add call but {uniq[counts > 1][:10].tolist()} "
                       "repeat; keep the last vector of each id before adding.")

    def _write(self, ids, codes, scales, inv) -> None:
        present = np.fromiter((self._row.get(int(i), -1) for i in ids), np.int64, len(ids))
        old = present >= 0
        new = ~old
        n_new = int(new.sum())
        self._reserve(self._n + n_new)
        rows = present.copy()
        rows[new] = np.arange(self._n, self._n + n_new)
        self._codes[rows] = codes
        self._scales[rows] = scales
        self._inv_norm[rows] = inv
        self._ids[rows] = ids
        for i, r in zip(ids[new].tolist(), rows[new].tolist()):
            self._row[i] = r
        if self._mirror is not None:
            self._mirror.mark_rows(rows[old])
            self._mirror.mark_range(self._n, self._n + n_new)
        self._n += n_new

    def _reserve(self, need: int) -> None:
        cap = self._codes.shape[0]
        if need <= cap:
            return
        cap = max(need, 2 * cap, _MIN_CAPACITY)
        n = self._n
        for name in ("_codes", "_scales", "_inv_norm", "_ids"):
            old = getattr(self, name)
            grown = np.zeros((cap,) + old.shape[1:], old.dtype)
            grown[:n] = old[:n]
            setattr(self, name, grown)

    # ---- searching -------------------------------------------------------------

    def search(self, queries, k: int, min_score: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` stored vectors most cosine-similar to each query.

        Args:
            queries: ``(dim,)`` or ``(q, dim)`` real vectors (normalised here; zero
                or non-finite ones are refused).
            k: how many hits per query, >= 1.
            min_score: drop hits scoring below it.

        Returns:
            ``(ids int64, scores float32)``: ``(k',)`` for a 1-D query, ``(q, k')`` for
            2-D, ``k' = min(k, len(self))``, by descending score then ascending id.
            With ``min_score`` a 1-D query returns only the hits that pass; 2-D rows
            are padded with id -1 and score -inf.
        """
        q = self._queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise _err(f"k must be an int >= 1 but got {k!r}.")
        if min_score is not None and (not isinstance(min_score, (int, float, np.number)) or np.isnan(min_score)):
            raise _err(f"min_score must be a number or None but got {min_score!r}.")
        with self._lock:
            n = self._n
            if n == 0:
                ids, sc = np.empty((len(q), 0), np.int64), np.empty((len(q), 0), np.float32)
            elif self._mirror is not None:
                self._mirror.sync(self._codes, self._inv_norm, n)
                ids, sc = self._mirror.topk(q, self._ids[:n], int(k))
            else:
                ids, sc = ks.topk(self._codes[:n], self._inv_norm[:n], self._ids[:n], q, int(k))
        if min_score is not None:
            miss = sc < np.float32(min_score)
            ids[miss], sc[miss] = -1, -np.inf
        if np.ndim(queries) == 1:
            keep = ids[0] >= 0
            return ids[0][keep], sc[0][keep]
        return ids, sc

    def _queries(self, queries) -> np.ndarray:
        """Unit float32 ``(q, dim)`` rows from a ``(dim,)`` or ``(q, dim)`` input."""
        a = np.asarray(queries)
        if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
            raise _err(f"queries must be real numbers but got dtype {a.dtype}.")
        if a.ndim not in (1, 2) or a.shape[-1] != self.dim:
            raise _err(f"queries must have shape ({self.dim},) or (q, {self.dim}) for this index "
                       f"but got {a.shape}.")
        a = np.atleast_2d(a).astype(np.float64)
        top = np.abs(a).max(axis=1)
        bad = ~np.isfinite(top) | (top == 0)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            what = "all zeros" if top[j] == 0 else "not finite (NaN or inf)"
            raise _err(f"query {j} is {what}; a cosine needs a finite, non-zero query vector.")
        a /= top[:, None]  # scale first so the norm of huge values cannot overflow
        return np.ascontiguousarray((a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32))
