"""Copy bias: help a small model repeat a memory's words exactly.

A 135M model that has just read "My tailor lives in Thourkhundhaven." answers "Your
tailor lives in Thurkhundhaven.": it starts the name right and loses it half way,
because an invented word is six or seven sub-word tokens it has never seen together.
:func:`make_copy_bias` returns a logits processor that, while the reply is repeating
a stretch of a source text (its last ``min_match`` or more generated tokens also
occur, in order, in a source), adds ``bonus`` to the logit of the token that comes
next in that source (the longest such match wins; ties all get it). The model still
decides whether to copy and when to stop: the bonus only tips near-ties, and
nothing is biased before the reply has started to repeat a source.

Chosen on SmolLM2-135M-Instruct (greedy) in a scratch comparison on 100 questions of
the personalization benchmark (its tuning split, so not a figure to quote) with the right
memory alone in the prompt: right
88% of the time without the bias, 97-98% with ``bonus`` 3 to 10 and ``min_match`` 1
or 2. ``python -m mlx_synapse.benchmarks.personalization --copy-bonus 0`` measures
the whole assistant without it.

Works with either backend's processor convention: ``tokens`` is everything so far
(prompt + generated; a NumPy array or an ``mx.array``) and ``logits`` is ``(V,)`` or
``(1, V)`` of the same kind.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import numpy as np

__all__ = ["make_copy_bias", "next_copy_tokens"]


def next_copy_tokens(sources: Sequence[Sequence[int]], generated: Sequence[int], min_match: int = 2) -> List[int]:
    """Tokens that would continue the longest (>= ``min_match``) stretch of ``sources``
    that ``generated`` ends with; empty when there is none."""
    best, out = 0, set()
    n = len(generated)
    if n < min_match:
        return []
    for s in sources:
        for p in range(len(s) - 1):  # p: where the match ends in the source; s[p + 1] comes next
            length = 0
            while length < n and length <= p and s[p - length] == generated[n - 1 - length]:
                length += 1
            if length < min_match or length < best:
                continue
            if length > best:
                best, out = length, set()
            out.add(int(s[p + 1]))
    return sorted(out)


def make_copy_bias(sources: Sequence[Sequence[int]], prompt_len: int, bonus: float = 6.0,
                   min_match: int = 2) -> Callable:
    """A logits processor ``(tokens, logits) -> logits`` that favours repeating ``sources``
    (token id lists) once the reply (the tokens after the first ``prompt_len``) has
    started to; see the module docstring."""
    if min_match < 1:
        raise ValueError(f"[copy_bias] min_match must be >= 1 but got {min_match}.")
    if not np.isfinite(bonus) or bonus < 0:
        raise ValueError(f"[copy_bias] bonus must be a finite number >= 0 but got {bonus}.")
    srcs = [[int(t) for t in s] for s in sources if len(s) > 1]

    def processor(tokens, logits):
        if not srcs or not bonus:
            return logits
        generated = np.asarray(tokens).reshape(-1)[prompt_len:].tolist()
        nxt = next_copy_tokens(srcs, generated, min_match)
        if not nxt:
            return logits
        if isinstance(logits, np.ndarray):
            out = np.array(logits, dtype=np.float32, copy=True)
            out[..., nxt] += bonus
            return out
        import mlx.core as mx

        return logits.at[..., mx.array(nxt)].add(bonus)

    return processor
