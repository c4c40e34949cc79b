"""Argument checks of ``generate``/``stream_generate`` and the generate CLI.

Every out-of-range setting, an over-long prompt, or unreadable input is one
``ValueError`` line naming the option, the value and the fix, the same on both
backends. Nothing here imports MLX.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Optional

DEFAULT_MAX_TOKENS = 256


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# Both KV caches always keep the first 4 tokens (models/cache.py, backends/numpy/cache.py).
_KV_KEEP = 4
_KV_MIN = 8  # the smallest rotating cache either backend builds


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_options(*, max_tokens=DEFAULT_MAX_TOKENS, temp=0.0, top_p=1.0, min_p=0.0, top_k=0,
                  repetition_penalty=None, repetition_context_size=20, seed=None,
                  max_kv_size=None, prefill_step_size=512) -> None:
    """Reject out-of-range generation settings, the same way on both backends.

    Raises:
        ValueError: one line naming the option (API and CLI spelling), the value and the range.
    """
    checks = (
        ("max_tokens", max_tokens, _is_int(max_tokens) and max_tokens >= 0, "an integer >= 0"),
        ("temp", temp, _is_real(temp) and temp >= 0, "a number >= 0 (0 = greedy)"),
        ("top_p", top_p, _is_real(top_p) and 0 < top_p <= 1, "a number in (0, 1]"),
        ("min_p", min_p, _is_real(min_p) and 0 <= min_p < 1, "a number in [0, 1) (0 = off)"),
        ("top_k", top_k, _is_int(top_k) and top_k >= 0, "an integer >= 0 (0 = off)"),
        ("repetition_penalty", repetition_penalty,
         repetition_penalty is None or (_is_real(repetition_penalty) and repetition_penalty > 0),
         "a number > 0 (1 = off)"),
        ("repetition_context_size", repetition_context_size,
         _is_int(repetition_context_size) and repetition_context_size >= 1, "an integer >= 1"),
        ("seed", seed, seed is None or (_is_int(seed) and 0 <= seed < 2**32), "an integer in [0, 2**32)"),
        ("max_kv_size", max_kv_size, max_kv_size is None or (_is_int(max_kv_size) and max_kv_size >= _KV_MIN),
         f"an integer >= {_KV_MIN} (the cache always keeps the first {_KV_KEEP} tokens)"),
        ("prefill_step_size", prefill_step_size, _is_int(prefill_step_size) and prefill_step_size >= 1,
         "an integer >= 1"),
    )
    for name, value, ok, need in checks:
        if not ok:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"[generate] {name} ({flag}) must be {need} but got {value!r}.")


def context_length(model) -> Optional[int]:
    """The model's ``max_position_embeddings`` (None when unknown)."""
    n = getattr(model, "context_length", None)
    if n is None:
        n = (getattr(model, "config", None) or {}).get("max_position_embeddings")
    return n if _is_int(n) and n > 0 else None


def fit_prompt(model, ids: list, max_kv_size: Optional[int] = None, truncate: bool = False) -> list:
    """``ids`` if they fit the model's context (and a bounded KV cache), else an error.

    Beyond ``max_position_embeddings`` the model runs on positions it never saw, and
    a rotating cache smaller than the prompt silently drops its middle, so a longer
    prompt is refused; ``truncate`` instead keeps its last tokens (the end is what the
    model continues from).
    """
    ctx = context_length(model)
    limits = [(n, what) for n, what in ((ctx, "the model's context (max_position_embeddings)"),
                                         (max_kv_size, "--max-kv-size")) if n is not None]
    if not limits:
        return ids
    limit, what = min(limits)
    if len(ids) <= limit:
        return ids
    if truncate:
        return ids[-limit:]
    raise ValueError(
        f"[generate] the prompt is {len(ids)} tokens but {what} is {limit}; shorten it, or pass "
        "--truncate-prompt (truncate_prompt=True) to keep only its last tokens."
    )


def read_prompt(prompt: Optional[str], stdin=None) -> str:
    """The prompt text: ``prompt``, or stdin when it is None or "-".

    Raises:
        ValueError: nothing to read, invalid UTF-8, or an empty prompt.
    """
    stdin = sys.stdin if stdin is None else stdin
    if prompt is None or prompt == "-":
        if stdin is None or (prompt is None and stdin.isatty()):
            raise ValueError("give --prompt TEXT or pipe text on stdin.")
        raw = getattr(stdin, "buffer", None)
        data = raw.read() if raw is not None else stdin.read()
        if isinstance(data, bytes):
            try:
                prompt = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"stdin is not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); "
                    "convert it first, e.g. iconv -f latin1 -t utf-8."
                ) from None
        else:
            prompt = data
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable bytes in argv arrive as surrogate escapes
        raise ValueError(f"--prompt is not valid UTF-8 (at character {e.start}); pass UTF-8 text.") from None
    if not prompt.strip():
        raise ValueError("the prompt is empty; give --prompt TEXT or text on stdin.")
    return prompt
