"""The MLX generation loop behind ``mlx_synapse.generate_step`` (the NumPy
backend's twin is ``backends/numpy/generate.py``), and the adapters that let
samplers / processors of either convention run on either backend.

User callables take NumPy arrays; the ones ``mlx_synapse.sample`` builds are
marked ``mlx_native`` and run on ``mx.array`` without leaving the device.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def on_device(fn: Callable) -> bool:
    """Whether ``fn`` is an MLX-native sampler or processor (``mlx_synapse.sample`` marks them)."""
    return bool(getattr(fn, "mlx_native", False))


def _mx():
    import mlx.core as mx

    return mx


def numpy_sampler(fn: Callable) -> Callable:
    """An MLX-native sampler made to take NumPy (V,) and return an int (NumPy models)."""
    if not on_device(fn):
        return fn
    mx = _mx()
    return lambda lp: int(fn(mx.array(lp)[None]).item())


def numpy_processor(fn: Callable) -> Callable:
    """An MLX-native logits processor made to take and return NumPy (V,) (NumPy models)."""
    if not on_device(fn):
        return fn
    mx = _mx()
    return lambda toks, logits: np.array(fn(mx.array(toks), mx.array(logits)[None])[0].astype(mx.float32))


class _History:
    """The prompt and the tokens generated so far, as int64 (N,) for NumPy processors."""

    def __init__(self, prompt: np.ndarray):
        self.buf = np.empty(max(64, 2 * prompt.size), np.int64)
        self.buf[: prompt.size] = prompt
        self.n = prompt.size

    def append(self, tok: int) -> None:
        if self.n == self.buf.size:
            self.buf = np.concatenate([self.buf, np.empty_like(self.buf)])
        self.buf[self.n] = tok
        self.n += 1

    def view(self) -> np.ndarray:
        return self.buf[: self.n]


def generate_step(prompt, model, *, max_tokens, sampler, logits_processors, max_kv_size,
                  kv_bits, prompt_cache, prefill_step_size):
    """The MLX loop: ``(token, logprobs mx (V,))``; NumPy samplers/processors fed host copies."""
    mx = _mx()

    from .models.cache import make_prompt_cache

    tokens = prompt if isinstance(prompt, mx.array) else mx.array(np.asarray(prompt, np.int64), mx.uint32)
    tokens = tokens.reshape(-1)
    if tokens.size == 0:
        raise ValueError("[generate] the prompt is empty; give at least one token.")
    cache = prompt_cache if prompt_cache is not None else make_prompt_cache(model, max_kv_size, kv_bits)
    native_sampler = sampler is None or on_device(sampler)
    sampler = sampler or (lambda lp: mx.argmax(lp, axis=-1))
    processors = logits_processors or []
    # Device-side processors get the history as an mx.array (kept lazily, no sync);
    # NumPy ones a host copy, which needs each sampled token's value.
    device_history = any(on_device(p) for p in processors)
    host_history = _History(np.array(tokens, dtype=np.int64)) if any(not on_device(p) for p in processors) else None
    history = tokens

    def step(y):
        nonlocal history
        logits = model(y[None], cache=cache)[:, -1, :]
        for p in processors:
            if on_device(p):
                logits = p(history, logits)
            else:
                out = p(host_history.view(), np.array(logits[0].astype(mx.float32)))
                logits = mx.array(np.asarray(out, np.float32).reshape(1, -1))
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if native_sampler:
            tok = sampler(logprobs)
        else:
            tok = mx.array([int(sampler(np.array(logprobs[0].astype(mx.float32))))], mx.uint32)
        if device_history:
            history = mx.concatenate([history, tok.astype(history.dtype)])
        if host_history is not None:
            host_history.append(int(tok.item()))
        lp = logprobs.squeeze(0)
        # float32 inside the step, so handing it out as NumPy needs no new work queued
        # behind the step already running ahead.
        return tok, lp if lp.dtype == mx.float32 else lp.astype(mx.float32)

    # Chunked prefill of all but the last token; evaluating only the cache after each
    # chunk bounds peak memory and never computes the prompt's logits (lazy graph).
    while tokens.size > 1:
        n = min(prefill_step_size, tokens.size - 1)
        model(tokens[:n][None], cache=cache)
        mx.eval([c.state for c in cache])
        tokens = tokens[n:]
    y, logprobs = step(tokens)
    mx.async_eval(y, logprobs)
    n = 0
    while True:
        if n == max_tokens:
            break
        # Queue the next step before handing out this one, so the device keeps busy
        # while the caller detokenizes.
        if n + 1 != max_tokens:
            next_y, next_lp = step(y)
            mx.async_eval(next_y, next_lp)
        yield y.item(), logprobs
        if n + 1 != max_tokens:
            y, logprobs = next_y, next_lp
        n += 1
