"""Token samplers and logits processors (NumPy only).

Filters (top-k, top-p, min-p) are decided on the model's own distribution
(the log-probabilities handed to the sampler, before temperature); the
surviving tokens are then sampled at temperature ``temp``.  As in mlx-lm a
filter is off at its neutral value: ``top_k=0``, ``top_p`` of 0 or 1,
``min_p=0``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np

Sampler = Callable[[np.ndarray], int]
LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]


# Relative-probability thresholds tried, in order, to find a most-probable
# candidate pool before any sorting (0.0 ends with the whole vocabulary).
_THRESHOLDS = (1e-2, 1e-4, 1e-8, 1e-16, 0.0)


def _at_least(p: np.ndarray, pool: Optional[np.ndarray], thr: float) -> np.ndarray:
    if pool is None:
        return np.flatnonzero(p >= np.float32(thr))
    return pool[p[pool] >= np.float32(thr)]


def allowed_tokens(logprobs: np.ndarray, top_p: float = 1.0, min_p: float = 0.0, top_k: int = 0) -> np.ndarray:
    """Indices (sorted by descending probability) that survive all active filters.

    * top_k > 0: the k most probable tokens;
    * 0 < top_p < 1: the smallest most-probable set whose probability sum reaches top_p;
    * min_p > 0: tokens with probability >= min_p * (highest probability).
    The most probable token always survives.  Every filter keeps a
    most-probable prefix, so each works on a threshold-selected pool and only
    the survivors are partitioned/sorted (sorting all 50k logits per token
    would cost milliseconds).
    """
    lp = np.asarray(logprobs, dtype=np.float32).reshape(-1)
    p = np.exp(lp - lp.max())  # probabilities relative to the max
    pool: Optional[np.ndarray] = None  # None: the whole vocabulary
    if min_p > 0.0:
        pool = _at_least(p, None, min_p)
    if top_k > 0 and (pool is None or top_k < pool.size):
        for thr in _THRESHOLDS:
            sel = _at_least(p, pool, thr)
            if sel.size >= top_k or thr == 0.0:
                break
        if sel.size > top_k:
            sel = sel[np.argpartition(-lp[sel], top_k - 1)[:top_k]]
        pool = sel
    if 0.0 < top_p < 1.0:
        total = p.sum(dtype=np.float64)
        for thr in _THRESHOLDS:
            sel = _at_least(p, pool, thr)
            if thr == 0.0 or p[sel].sum(dtype=np.float64) >= top_p * total:
                break
        order = sel[np.argsort(-lp[sel], kind="stable")]
        cum = np.cumsum(p[order], dtype=np.float64) / total
        n = int(np.searchsorted(cum, top_p, side="left")) + 1
        return order[:n]
    if pool is None:
        pool = np.arange(lp.size)
    return pool[np.argsort(-lp[pool], kind="stable")]


def _categorical(w: np.ndarray, u: float, block: int = 512) -> int:
    """Index i with probability w[i] / sum(w) (w >= 0, float), from one uniform u.

    Inverse CDF in two levels (block sums, then one block), since a plain
    cumsum over a 50k vocabulary is slow in NumPy.
    """
    n = w.size
    if n <= block:
        cdf = np.cumsum(w, dtype=np.float64)
        i = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
        return _last_positive(w, min(i, n - 1))
    nb = -(-n // block)
    head = w[: (nb - 1) * block].reshape(nb - 1, block).sum(axis=1, dtype=np.float64)
    sums = np.append(head, w[(nb - 1) * block :].sum(dtype=np.float64))
    csum = np.cumsum(sums)
    target = u * csum[-1]
    j = min(int(np.searchsorted(csum, target, side="right")), nb - 1)
    while sums[j] == 0.0 and j > 0:
        j -= 1
    rest = target - (csum[j - 1] if j > 0 else 0.0)
    seg = w[j * block : (j + 1) * block]
    cdf = np.cumsum(seg, dtype=np.float64)
    i = min(int(np.searchsorted(cdf, rest, side="right")), seg.size - 1)
    return j * block + _last_positive(seg, i)


def _last_positive(w: np.ndarray, i: int) -> int:
    """Guard against rounding landing on a zero-probability entry."""
    while w[i] <= 0 and i > 0:
        i -= 1
    return i


def make_sampler(
    temp: float = 0.0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    top_k: int = 0,
    seed: Optional[int] = None,
) -> Sampler:
    """A callable ``logprobs (V,) -> token id``; ``temp == 0`` is greedy argmax."""
    if temp < 0:
        raise ValueError(f"temp must be >= 0, got {temp}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1] (0 or 1: off), got {top_p}")
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if temp == 0:
        return lambda logprobs: int(np.argmax(logprobs))

    rng = np.random.default_rng(seed)
    inv_t = np.float32(1.0 / float(temp))
    filtered = top_k > 0 or 0.0 < top_p < 1.0 or min_p > 0.0

    def sample(logprobs: np.ndarray) -> int:
        lp = np.asarray(logprobs, dtype=np.float32).reshape(-1)
        idx = allowed_tokens(lp, top_p=top_p, min_p=min_p, top_k=top_k) if filtered else None
        z = lp[idx] if idx is not None else lp
        z = (z - z.max()) * inv_t
        np.exp(z, out=z)
        i = _categorical(z, rng.random())
        return int(idx[i]) if idx is not None else i

    return sample


def make_repetition_penalty(penalty: float, context_size: int = 20) -> LogitsProcessor:
    """Scale down logits of recently seen tokens (logit/penalty if > 0 else logit*penalty)."""
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")

    def processor(tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
        toks = np.asarray(tokens).reshape(-1)[-context_size:] if context_size > 0 else np.empty(0, int)
        if toks.size == 0:
            return logits
        toks = np.unique(toks)
        out = np.array(logits, dtype=np.float32, copy=True)
        sel = out[toks]
        out[toks] = np.where(sel > 0, sel / penalty, sel * penalty)
        return out

    return processor


def make_logit_bias(bias: Dict[int, float]) -> LogitsProcessor:
    """Add fixed offsets to chosen token logits."""
    idx = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
    val = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))

    def processor(tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
        out = np.array(logits, dtype=np.float32, copy=True)
        out[idx] += val
        return out

    return processor


def make_logits_processors(
    repetition_penalty: Optional[float] = None,
    repetition_context_size: int = 20,
    *,
    logit_bias: Optional[Dict[int, float]] = None,
) -> List[LogitsProcessor]:
    """Processors ``(tokens_so_far, logits) -> logits`` applied in order before sampling."""
    processors: List[LogitsProcessor] = []
    if logit_bias:
        processors.append(make_logit_bias(logit_bias))
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(make_repetition_penalty(repetition_penalty, repetition_context_size))
    return processors
