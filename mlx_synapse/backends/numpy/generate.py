"""Token-by-token generation with the NumPy backend."""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .sample import make_sampler


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis (float32; the normaliser summed in float64)."""
    x = np.asarray(logits, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True, dtype=np.float64))
    return (x - lse.astype(np.float32)).astype(np.float32, copy=False)


def generate_step(
    prompt: Sequence[int],
    model,
    *,
    max_tokens: int = 256,
    sampler: Optional[Callable[[np.ndarray], int]] = None,
    logits_processors: Optional[List[Callable[[np.ndarray, np.ndarray], np.ndarray]]] = None,
    max_kv_size: Optional[int] = None,
    prefill_step_size: int = 512,
    prompt_cache: Optional[list] = None,
) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(token, logprobs (V,) float32)`` for up to ``max_tokens`` new tokens
    (negative: no limit).

    The prompt is prefilled ``prefill_step_size`` tokens at a time (no logits
    are computed for prompt positions except the last).  The caller stops at
    EOS simply by not asking for the next token; no work is done ahead.
    ``prompt_cache`` (a cache from ``model.make_cache``) is filled in place
    when given, so a caller can keep it.
    """
    prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
    if prompt.size == 0:
        raise ValueError("[generate] generate_step needs a non-empty prompt; give at least one token id.")
    if prefill_step_size <= 0:
        raise ValueError(f"[generate] prefill_step_size must be positive but got {prefill_step_size}.")
    sampler = sampler or make_sampler(0.0)
    processors = list(logits_processors or [])
    cache = prompt_cache if prompt_cache is not None else model.make_cache(max_kv_size)
    if max_tokens == 0:
        return

    # All tokens seen so far (prompt + generated) for the processors; grows when
    # there is no limit (max_tokens < 0).
    tokens = np.empty(prompt.size + (max_tokens if max_tokens > 0 else 256), dtype=np.int64)
    tokens[: prompt.size] = prompt
    n_tok = prompt.size

    rest = prompt
    while rest.size > prefill_step_size:
        model.prefill(rest[:prefill_step_size], cache)
        rest = rest[prefill_step_size:]
    logits = model.forward_last(rest, cache)

    step = getattr(model, "step_logits", None)
    for n in range(max_tokens) if max_tokens > 0 else itertools.count():
        if n > 0:
            if step is not None:
                logits = step(int(tokens[n_tok - 1]), cache)
            else:
                logits = model.forward_last(tokens[n_tok - 1 : n_tok], cache)
        for proc in processors:
            logits = proc(tokens[:n_tok], logits)
        logprobs = log_softmax(logits)
        y = int(sampler(logprobs))
        if n_tok == tokens.size:
            tokens = np.concatenate([tokens, np.empty_like(tokens)])
        tokens[n_tok] = y
        n_tok += 1
        yield y, logprobs
