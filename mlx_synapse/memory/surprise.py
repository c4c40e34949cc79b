"""How surprising a text is to the frozen model, and the gate that decides what to keep.

Surprise of a text = the mean negative log-likelihood (nats per token) of its tokens
under the language model, each token predicted from the ones before it. The first
token is predicted from a start token (see :func:`_start_id`: the tokenizer's own BOS,
else its ``<|endoftext|>`` document separator, else EOS), so a one-token text has a
surprise too.

:class:`SurpriseGate` keeps, per user, the running mean and standard deviation of
the surprises it has seen (Welford's algorithm) and lets a text through when its
surprise exceeds ``mean + gamma * std`` — the event-boundary rule of EM-LLM
(Fountas et al., 2024), which uses ``gamma`` around 1. Until ``warmup`` surprises
have been seen there is nothing to compare with, and every text is let through.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["SurpriseScorer", "SurpriseGate", "GateDecision"]


class SurpriseScorer:
    """``scorer(texts) -> float64 (N,)``: mean token NLL of each text under ``model``.

    Works with both backends: a NumPy model (``model.backend == 'numpy'``, called
    on ``(L,)`` ids, returning ``(L, V)`` logits) or an MLX model (called on
    ``(1, L)`` ids, returning ``(1, L, V)``). Texts longer than ``max_tokens`` are
    scored on their first ``max_tokens`` tokens. An empty text raises ValueError.
    """

    def __init__(self, model, tokenizer, max_tokens: int = 256):
        if max_tokens < 1:
            raise ValueError(f"[memory.surprise] max_tokens must be >= 1 but got {max_tokens}.")
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens
        self.backend = getattr(model, "backend", "mlx")
        self._start = _start_id(tokenizer)
        self._no_specials = {"add_special_tokens": False} if _takes_special(tokenizer) else {}

    def _ids(self, text: str) -> list:
        if not isinstance(text, str):
            raise ValueError(f"[memory.surprise] texts must be str but got {type(text).__name__}.")
        ids = list(self.tokenizer.encode(text, **self._no_specials))
        if self._start is not None and (not ids or ids[0] != self._start):
            ids = [self._start] + ids
        ids = ids[: self.max_tokens + 1]
        if len(ids) < 2:
            raise ValueError(
                "[memory.surprise] the text has no tokens to score (empty text, or a tokenizer "
                "without BOS/EOS given a one-token text)."
            )
        return ids

    def _nll(self, ids: list) -> float:
        if self.backend == "numpy":
            from mlx_synapse.backends.numpy.generate import log_softmax

            lp = log_softmax(self.model(np.asarray(ids[:-1], np.int64)))
            return float(-lp[np.arange(len(ids) - 1), ids[1:]].mean())
        import mlx.core as mx

        logits = self.model(mx.array([ids[:-1]]))[0].astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = mx.take_along_axis(lp, mx.array(ids[1:])[:, None], axis=-1)
        return float(-picked.mean().item())

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise ValueError("[memory.surprise] pass a list of texts, not one str: scorer([text]).")
        return np.array([self._nll(self._ids(t)) for t in texts], np.float64)


def _start_id(tokenizer) -> Optional[int]:
    """The token a text is scored after: the BOS a tokenizer adds by itself (Llama); else
    the pretraining document separator ``<|endoftext|>`` where the vocabulary has one
    (GPT-2, SmolLM, Qwen: their BOS may be a chat marker like ``<|im_start|>``, after
    which plain text is very unlikely); else EOS; else BOS."""
    bos = getattr(tokenizer, "bos_token_id", None)
    try:
        probe = list(tokenizer.encode("a"))
    except Exception:
        probe = []
    if bos is not None and probe and probe[0] == bos:
        return bos
    try:
        sep = tokenizer.get_vocab().get("<|endoftext|>")
    except Exception:
        sep = None
    if isinstance(sep, int) and sep >= 0:
        return sep
    eos = getattr(tokenizer, "eos_token_id", None)
    return eos if eos is not None else bos


def _takes_special(tokenizer) -> bool:
    try:
        return "add_special_tokens" in inspect.signature(tokenizer.encode).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class GateDecision:
    """What the gate said about one surprise value."""

    write: bool
    surprise: float
    threshold: Optional[float]  # None during warm-up
    mean: float
    std: float
    count: int  # surprises seen before this one


class SurpriseGate:
    """Running ``mean + gamma * std`` threshold over the surprises of one user's texts.

    ``decide(s)`` compares ``s`` with the threshold of the surprises seen so far and
    then adds ``s`` to them (a text the gate rejects still tells it what is usual).
    ``state()`` / ``from_state()`` give a JSON-safe dict for persistence.
    """

    def __init__(self, gamma: float = 1.0, warmup: int = 8):
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma)):
            raise ValueError(f"[memory.surprise] gamma must be a finite number but got {gamma!r}.")
        if not (isinstance(warmup, int) and warmup >= 2):
            raise ValueError(f"[memory.surprise] warmup must be an int >= 2 but got {warmup!r}.")
        self.gamma, self.warmup = float(gamma), warmup
        self.count, self.mean, self._m2 = 0, 0.0, 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else 0.0

    def threshold(self) -> Optional[float]:
        return None if self.count < self.warmup else self.mean + self.gamma * self.std

    def decide(self, surprise: float, *, update: bool = True) -> GateDecision:
        s = float(surprise)
        if not math.isfinite(s):
            raise ValueError(f"[memory.surprise] surprise must be finite but got {surprise!r}.")
        thr = self.threshold()
        d = GateDecision(thr is None or s > thr, s, thr, self.mean, self.std, self.count)
        if update:
            self.count += 1
            delta = s - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (s - self.mean)
        return d

    def state(self) -> Dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self._m2}

    @classmethod
    def from_state(cls, state: Optional[dict], gamma: float = 1.0, warmup: int = 8) -> "SurpriseGate":
        g = cls(gamma, warmup)
        if state:
            try:
                count, mean, m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"[memory.surprise] stored gate state {state!r} is malformed ({e}).") from None
            if count < 0 or m2 < 0 or not (math.isfinite(mean) and math.isfinite(m2)):
                raise ValueError(f"[memory.surprise] stored gate state {state!r} is out of range.")
            g.count, g.mean, g._m2 = count, mean, m2
        return g
