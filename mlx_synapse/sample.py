"""MLX-native samplers and logits processors (plain callables on ``mx.array``).

A sampler maps log-probabilities (B, V) to tokens (B,); a logits processor maps
``(tokens_so_far, logits)`` to logits.  Each is marked ``mlx_native = True``:
``mlx_synapse.generate_step`` runs them on the device for MLX models and feeds
them converted arrays for NumPy ones (the public convention is NumPy arrays;
see ``generate_step``).  The NumPy backend has twins with the same semantics
in ``backends/numpy/sample.py``.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import mlx.core as mx


def mlx_native(fn: Callable) -> Callable:
    """Mark ``fn`` as taking and returning ``mx.array`` (see ``generate.generate_step``)."""
    fn.mlx_native = True
    return fn


def _apply_top_k(logprobs: mx.array, k: int) -> mx.array:
    if k <= 0 or k >= logprobs.shape[-1]:
        return logprobs
    kth = mx.sort(logprobs, axis=-1)[..., -k][..., None]
    return mx.where(logprobs >= kth, logprobs, -mx.inf)


def _apply_min_p(logprobs: mx.array, min_p: float) -> mx.array:
    if min_p <= 0.0:
        return logprobs
    # prob >= min_p * max_prob  <=>  logprob >= log(min_p) + max_logprob
    threshold = mx.max(logprobs, axis=-1, keepdims=True) + mx.log(mx.array(min_p))
    return mx.where(logprobs >= threshold, logprobs, -mx.inf)


def _apply_top_p(logprobs: mx.array, top_p: float) -> mx.array:
    if top_p >= 1.0:
        return logprobs
    order = mx.argsort(-logprobs, axis=-1)
    sorted_lp = mx.take_along_axis(logprobs, order, axis=-1)
    probs = mx.exp(sorted_lp)
    # Keep a token when the mass strictly before it is below top_p (the top one always stays).
    before = mx.cumsum(probs, axis=-1) - probs
    kept_sorted = mx.where(before < top_p, sorted_lp, -mx.inf)
    inverse = mx.argsort(order, axis=-1)
    return mx.take_along_axis(kept_sorted, inverse, axis=-1)


def make_sampler(
    temp: float = 0.0, top_p: float = 1.0, min_p: float = 0.0, top_k: int = 0
) -> Callable[[mx.array], mx.array]:
    """A sampler: greedy at ``temp == 0``, else top-k, top-p and min-p filtering then
    categorical sampling at temperature ``temp`` (seed with ``mx.random.seed``)."""
    if temp < 0:
        raise ValueError(f"[sampler] temp must be >= 0 but got {temp}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"[sampler] top_p must be in (0, 1] but got {top_p}.")
    if not 0 <= min_p < 1:
        raise ValueError(f"[sampler] min_p must be in [0, 1) but got {min_p}.")
    if temp == 0:
        return mlx_native(lambda logprobs: mx.argmax(logprobs, axis=-1))

    @mlx_native
    def sampler(logprobs: mx.array) -> mx.array:
        lp = _apply_top_p(_apply_min_p(_apply_top_k(logprobs, top_k), min_p), top_p)
        return mx.random.categorical(lp * (1.0 / temp), axis=-1)

    return sampler


def make_logits_processors(
    repetition_penalty: Optional[float] = None, repetition_context_size: int = 20
) -> List[Callable[[mx.array, mx.array], mx.array]]:
    """Logits processors; today the repetition penalty of the CTRL paper."""
    if not repetition_penalty or repetition_penalty == 1.0:
        return []
    if repetition_penalty <= 0:
        raise ValueError(f"[sampler] repetition_penalty must be > 0 but got {repetition_penalty}.")

    @mlx_native
    def penalty(tokens: mx.array, logits: mx.array) -> mx.array:
        recent = tokens[-repetition_context_size:]
        if recent.size == 0:
            return logits
        picked = logits[:, recent]
        picked = mx.where(picked < 0, picked * repetition_penalty, picked / repetition_penalty)
        logits[:, recent] = picked
        return logits

    return [penalty]
