"""Key/value caches for the NumPy backend.

Keys/values of one layer live in preallocated float32 buffers of shape
``(kv_heads, capacity, head_dim)``, grown ``step`` positions at a time, so a
decode step writes one row and hands back views (no per-token allocation).

Both caches expose the protocol the model uses:

* ``offset``: number of tokens processed so far (absolute position of the next);
* ``make_mask(n)``: additive float32 mask ``(n, T)`` for the next ``n`` tokens,
  or ``None`` when every returned key may be attended by every query (the
  model asks layer 0's cache once per forward and shares the answer);
* ``update_and_fetch(k, v)``: store ``(kv_heads, n, head_dim)`` and return the
  keys/values to attend over, in the column order ``make_mask`` described;
  the last cache of a forward advances ``offset``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

NEG_INF = np.float32(-np.inf)


def causal_mask(n: int, offset: int) -> Optional[np.ndarray]:
    """Additive mask letting query i (absolute offset+i) see keys 0..offset+i."""
    if n == 1:
        return None
    m = np.zeros((n, offset + n), dtype=np.float32)
    m[:, offset:] = np.triu(np.full((n, n), NEG_INF, dtype=np.float32), k=1)
    return m


class KVCache:
    """Unbounded cache: every past token stays attendable."""

    step = 256

    def __init__(self, step: int | None = None):
        if step is not None:
            self.step = int(step)
        self.keys: Optional[np.ndarray] = None
        self.values: Optional[np.ndarray] = None
        self.offset = 0

    def _reserve(self, k: np.ndarray, v: np.ndarray, needed: int) -> None:
        cap = 0 if self.keys is None else self.keys.shape[1]
        if needed <= cap:
            return
        new_cap = ((needed + self.step - 1) // self.step) * self.step
        nk = np.empty((k.shape[0], new_cap, k.shape[2]), dtype=np.float32)
        nv = np.empty((v.shape[0], new_cap, v.shape[2]), dtype=np.float32)
        if self.keys is not None and self.offset:
            nk[:, : self.offset] = self.keys[:, : self.offset]
            nv[:, : self.offset] = self.values[:, : self.offset]
        self.keys, self.values = nk, nv

    def make_mask(self, n: int) -> Optional[np.ndarray]:
        return causal_mask(n, self.offset)

    def reserve_decode_slot(self, shape: tuple) -> tuple:
        """Make room for one token of ``(kv_heads, head_dim)`` written by the caller
        (the compiled decode engine); returns ``(slot, T)``: the row to write and
        how many rows to attend over.  Advances ``offset``."""
        slot = self.offset
        if self.keys is None or self.keys.shape[1] <= slot:
            like = np.empty((shape[0], 1, shape[1]), np.float32)
            self._reserve(like, like, slot + 1)
        self.offset = slot + 1
        return slot, slot + 1

    def update_and_fetch(self, k: np.ndarray, v: np.ndarray):
        n = k.shape[1]
        end = self.offset + n
        self._reserve(k, v, end)
        self.keys[:, self.offset : end] = k
        self.values[:, self.offset : end] = v
        self.offset = end
        return self.keys[:, :end], self.values[:, :end]

    def size(self) -> int:
        return self.offset

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Forget the last ``n`` tokens (e.g. to reuse a cached prompt prefix)."""
        n = min(self.offset, n)
        self.offset -= n
        return n


class RotatingKVCache:
    """Bounded cache of ``max_size`` tokens: the first ``keep`` plus the most recent.

    A query at absolute position ``p`` attends to keys at positions ``t <= p``
    with ``t < keep`` or ``t > p - (max_size - keep)``; i.e. the first ``keep``
    tokens (attention sinks) plus a sliding window, ``max_size`` keys at most,
    the query itself included.  RoPE positions stay absolute (keys are stored
    already rotated).  Slots ``0..keep-1`` hold the first tokens, the remaining
    ``max_size - keep`` slots form a ring buffer.
    """

    step = 256

    def __init__(self, max_size: int, keep: int = 4, step: int | None = None):
        if max_size <= keep:
            raise ValueError(f"max_kv_size={max_size} must exceed the {keep} always-kept tokens")
        if step is not None:
            self.step = int(step)
        self.max_size = int(max_size)
        self.keep = int(keep)
        self.ring = self.max_size - self.keep
        self.keys: Optional[np.ndarray] = None
        self.values: Optional[np.ndarray] = None
        self.offset = 0
        self._pos: Optional[np.ndarray] = None  # absolute position held by each slot

    # -- helpers -----------------------------------------------------------
    def _filled(self) -> int:
        return min(self.offset, self.max_size)

    def _slot(self, p: np.ndarray | int):
        return np.where(p < self.keep, p, self.keep + (p - self.keep) % self.ring)

    def _reserve(self, k: np.ndarray, v: np.ndarray, needed: int) -> None:
        needed = min(needed, self.max_size)
        cap = 0 if self.keys is None else self.keys.shape[1]
        if needed <= cap:
            return
        new_cap = min(self.max_size, ((needed + self.step - 1) // self.step) * self.step)
        nk = np.empty((k.shape[0], new_cap, k.shape[2]), dtype=np.float32)
        nv = np.empty((v.shape[0], new_cap, v.shape[2]), dtype=np.float32)
        npos = np.full(new_cap, -1, dtype=np.int64)
        f = self._filled()
        if self.keys is not None and f:
            nk[:, :f] = self.keys[:, :f]
            nv[:, :f] = self.values[:, :f]
            npos[:f] = self._pos[:f]
        self.keys, self.values, self._pos = nk, nv, npos

    def _fits(self, n: int) -> bool:
        # Decoding one token, or anything before the buffer wraps, needs no extra mask.
        return n == 1 or self.offset + n <= self.max_size

    # -- protocol ------------------------------------------------------------
    def make_mask(self, n: int) -> Optional[np.ndarray]:
        if self.offset + n <= self.max_size:
            return causal_mask(n, self.offset)
        if n == 1:
            return None
        f = self._filled()
        held = self._pos[:f] if f else np.empty(0, dtype=np.int64)
        kpos = np.concatenate([held, self.offset + np.arange(n)])
        qpos = self.offset + np.arange(n)[:, None]
        ok = (kpos[None, :] <= qpos) & ((kpos[None, :] < self.keep) | (kpos[None, :] > qpos - self.ring))
        return np.where(ok, np.float32(0), NEG_INF).astype(np.float32)

    def reserve_decode_slot(self, shape: tuple) -> tuple:
        """As :meth:`KVCache.reserve_decode_slot`: the slot one new token takes
        (the ring's oldest once full) and the number of slots to attend over."""
        start = self.offset
        need = min(start + 1, self.max_size)
        if self.keys is None or self.keys.shape[1] < need:
            like = np.empty((shape[0], 1, shape[1]), np.float32)
            self._reserve(like, like, start + 1)
        slot = start if start < self.max_size else self.keep + (start - self.keep) % self.ring
        self._pos[slot] = start
        self.offset = start + 1
        return slot, min(self.offset, self.max_size)

    def update_and_fetch(self, k: np.ndarray, v: np.ndarray):
        n = k.shape[1]
        start = self.offset
        if self._fits(n):
            self._reserve(k, v, start + n)
            if start + n <= self.max_size:
                self.keys[:, start : start + n] = k
                self.values[:, start : start + n] = v
                self._pos[start : start + n] = np.arange(start, start + n)
                out = self.keys[:, : start + n], self.values[:, : start + n]
            else:  # one token into a full ring: overwrite the one falling out of the window
                s = self.keep + (start - self.keep) % self.ring
                self.keys[:, s] = k[:, 0]
                self.values[:, s] = v[:, 0]
                self._pos[s] = start
                out = self.keys, self.values
            self.offset = start + n
            return out
        # Several tokens past the window: attend over [stored slots | new tokens]
        # with make_mask's explicit mask, then store what the next step needs.
        self._reserve(k, v, start + n)
        f = self._filled()
        keys = np.concatenate([self.keys[:, :f], k], axis=1) if f else np.ascontiguousarray(k)
        values = np.concatenate([self.values[:, :f], v], axis=1) if f else np.ascontiguousarray(v)
        pos = np.arange(start, start + n)
        sel = np.nonzero(pos < self.keep)[0]
        rest = np.nonzero(pos >= self.keep)[0][-self.ring :]
        sel = np.concatenate([sel, rest])
        slots = self._slot(pos[sel])
        self.keys[:, slots] = k[:, sel]
        self.values[:, slots] = v[:, sel]
        self._pos[slots] = pos[sel]
        self.offset = start + n
        return keys, values

    def size(self) -> int:
        return self._filled()

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def is_trimmable(self) -> bool:
        return self.offset < self.max_size

    def trim(self, n: int) -> int:
        n = min(self.offset, n) if self.offset < self.max_size else 0
        self.offset -= n
        return n


def make_cache(num_layers: int, max_kv_size: int | None = None, keep: int = 4):
    if max_kv_size is None:
        return [KVCache() for _ in range(num_layers)]
    return [RotatingKVCache(int(max_kv_size), keep=keep) for _ in range(num_layers)]
