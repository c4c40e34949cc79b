"""Per-layer key/value caches for the MLX models.

Every cache has ``offset`` (tokens seen so far), ``update_and_fetch(keys,
values)`` taking (B, H, L, D) arrays and returning what attention should read,
``make_mask(L)``, ``state`` (arrays to ``mx.eval``) and ``nbytes``.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

# Buffers grow in steps of this many tokens so decoding does not reallocate per token.
_STEP = 256


class _BaseCache:
    """What every cache shares: causal masks and its arrays as ``state``."""

    keys = values = None

    def make_mask(self, L: int):
        return "causal" if L > 1 else None

    @property
    def state(self) -> list:
        if self.keys is None:
            return []
        pair = (self.keys, self.values)
        # Quantized caches hold (packed, scales, biases) tuples.
        return [a for kv in pair for a in (kv if isinstance(kv, tuple) else (kv,))]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)


class KVCache(_BaseCache):
    """Plain growing cache."""

    def __init__(self):
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        prev, L = self.offset, keys.shape[2]
        if self.keys is None or prev + L > self.keys.shape[2]:
            B, H, _, Dk = keys.shape
            n = ((prev + L + _STEP - 1) // _STEP) * _STEP
            new_k = mx.zeros((B, H, n, Dk), keys.dtype)
            new_v = mx.zeros((B, H, n, values.shape[3]), values.dtype)
            if self.keys is not None:
                new_k[..., :prev, :] = self.keys[..., :prev, :]
                new_v[..., :prev, :] = self.values[..., :prev, :]
            self.keys, self.values = new_k, new_v
        self.offset += L
        self.keys[..., prev : self.offset, :] = keys
        self.values[..., prev : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]



class RotatingKVCache(_BaseCache):
    """Bounded cache: keeps the first ``keep`` tokens and the latest ``max_size - keep``.

    Keys are stored already rotated (RoPE at absolute positions), so attention
    over the kept tokens is exact; a token outside the window is simply not
    attended to.
    """

    def __init__(self, max_size: int, keep: int = 4):
        if max_size <= keep:
            raise ValueError(
                f"[RotatingKVCache] max_size must exceed keep={keep} but got {max_size}; "
                "use a larger --max-kv-size."
            )
        self.max_size, self.keep = max_size, keep
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0
        self._size = 0  # valid slots; the buffer may hold more capacity
        self._idx = 0  # next ring slot once the buffer is full

    def _positions(self) -> mx.array:
        """Absolute position of every valid slot (buffer order)."""
        slots = mx.arange(self._size)
        if self.offset <= self.max_size:
            return slots
        window = self.max_size - self.keep
        # Ring slots [keep, max) hold the latest `window` tokens; slot _idx-1 is the newest.
        newest = self.offset - 1
        age = (self._idx - 1 - slots) % window
        return mx.where(slots < self.keep, slots, newest - age)

    def make_mask(self, L: int):
        if L == 1:
            return None
        window = self.max_size - self.keep
        q_pos = mx.arange(self.offset, self.offset + L)[:, None]
        past = self._positions() if self.keys is not None else mx.zeros((0,), mx.int32)
        k_pos = mx.concatenate([past, mx.arange(self.offset, self.offset + L)])[None]
        return (k_pos <= q_pos) & ((k_pos < self.keep) | (k_pos > q_pos - window))

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        L = keys.shape[2]
        if L == 1 and self.keys is not None and self._size < self.max_size:
            # Decoding while the window fills: append in place, growing by steps.
            if self._size == self.keys.shape[2]:
                n = min(_STEP, self.max_size - self._size)
                grow = lambda a: mx.concatenate(  # noqa: E731
                    [a, mx.zeros((*a.shape[:2], n, a.shape[3]), a.dtype)], axis=2)
                self.keys, self.values = grow(self.keys), grow(self.values)
            self.keys[..., self._size : self._size + 1, :] = keys
            self.values[..., self._size : self._size + 1, :] = values
            self._size += 1
            self.offset += 1
            self._idx = self.keep  # once full, the oldest windowed token sits at `keep`
            return self.keys[..., : self._size, :], self.values[..., : self._size, :]
        if L == 1 and self.keys is not None:
            # Steady state of decoding: overwrite the oldest windowed slot in place.
            self.keys[..., self._idx : self._idx + 1, :] = keys
            self.values[..., self._idx : self._idx + 1, :] = values
            self.offset += 1
            self._idx = self.keep + (self._idx + 1 - self.keep) % (self.max_size - self.keep)
            return self.keys, self.values
        # Prompt chunks: attend over old + new with make_mask, then store the kept
        # prefix and the newest window in temporal order.
        if self.keys is None:
            all_k, all_v = keys, values
        else:
            order = mx.argsort(self._positions())
            all_k = mx.concatenate([self.keys[..., order, :], keys], axis=2)
            all_v = mx.concatenate([self.values[..., order, :], values], axis=2)
        self.offset += L
        if all_k.shape[2] > self.max_size:
            tail = self.max_size - self.keep
            self.keys = mx.concatenate([all_k[..., : self.keep, :], all_k[..., -tail:, :]], axis=2)
            self.values = mx.concatenate([all_v[..., : self.keep, :], all_v[..., -tail:, :]], axis=2)
        else:
            self.keys, self.values = all_k, all_v
        self._size = self.keys.shape[2]
        self._idx = self.keep
        return all_k, all_v

    @property
    def state(self) -> list:
        return [] if self.keys is None else [self.keys[..., : self._size, :], self.values[..., : self._size, :]]


class QuantizedKVCache(_BaseCache):
    """Cache holding keys and values affine-quantized (``bits``, ``group_size``) along D."""

    def __init__(self, group_size: int = 64, bits: int = 8):
        self.group_size, self.bits = group_size, bits
        self.keys: Optional[tuple] = None
        self.values: Optional[tuple] = None
        self.offset = 0

    def _alloc(self, x: mx.array, n: int) -> tuple:
        B, H, _, D = x.shape
        el_per_int = 32 // self.bits
        return (
            mx.zeros((B, H, n, D // el_per_int), mx.uint32),
            mx.zeros((B, H, n, D // self.group_size), x.dtype),
            mx.zeros((B, H, n, D // self.group_size), x.dtype),
        )

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        prev, L = self.offset, keys.shape[2]
        if self.keys is None or prev + L > self.keys[0].shape[2]:
            n = ((prev + L + _STEP - 1) // _STEP) * _STEP
            new_k, new_v = self._alloc(keys, n), self._alloc(values, n)
            if self.keys is not None:
                for dst, src in zip(new_k + new_v, self.keys + self.values):
                    dst[..., :prev, :] = src[..., :prev, :]
            self.keys, self.values = new_k, new_v
        self.offset += L
        qk = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        qv = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for dst, src in zip(self.keys + self.values, qk + qv):
            dst[..., prev : self.offset, :] = src
        return (
            tuple(a[..., : self.offset, :] for a in self.keys),
            tuple(a[..., : self.offset, :] for a in self.values),
        )



def make_prompt_cache(
    model, max_kv_size: Optional[int] = None, kv_bits: Optional[int] = None, kv_group_size: int = 64
) -> list:
    """One cache per layer of ``model`` for the requested kind.

    Args:
        model: an MLX model with ``layers`` and ``args``.
        max_kv_size: bound the cache to this many tokens (rotating cache).
        kv_bits: quantize the cache to this many bits (4 or 8).
        kv_group_size: quantization group along the head dimension.
    """
    n = len(model.layers)
    if max_kv_size is not None and kv_bits is not None:
        raise ValueError(
            "[cache] --max-kv-size and --kv-bits cannot be combined yet; choose one."
        )
    if max_kv_size is not None:
        if max_kv_size < 8:
            raise ValueError(f"[cache] max_kv_size must be at least 8 but got {max_kv_size}.")
        return [RotatingKVCache(max_kv_size) for _ in range(n)]
    if kv_bits is not None:
        if kv_bits not in (4, 8):
            raise ValueError(f"[cache] kv_bits must be 4 or 8 but got {kv_bits}.")
        head_dim = model.args.head_dim
        group = min(kv_group_size, head_dim)
        if head_dim % group or group not in (32, 64, 128):
            raise ValueError(
                f"[cache] cannot quantize keys of head_dim {head_dim} in groups of {group}; "
                "MLX groups are 32, 64 or 128 and must divide head_dim — drop --kv-bits."
            )
        return [QuantizedKVCache(group, kv_bits) for _ in range(n)]
    return [KVCache() for _ in range(n)]
