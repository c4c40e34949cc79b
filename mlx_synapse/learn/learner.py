"""``ContinualLearner``: learn from new text in a few adapter steps, with replay and EWC.

Each ``learn_from_text`` call trains the adapter on the new examples mixed
with replayed old ones (``replay_share`` of the batch data), under the EWC
penalty of what earlier tasks consolidated, then files the new examples in the
replay buffer. ``consolidate(domain)`` estimates the Fisher on a domain's
examples and anchors EWC there (call it when a task/domain is done).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .checkpoint import load_checkpoint, save_checkpoint
from .data import _fmt, tokenize
from .ewc import EWC, fisher_diagonal
from .lora import apply_lora
from .replay import ReplayBuffer
from .trainer import TrainingArgs, evaluate, loss_fn, make_batch, train


class ContinualLearner:
    """Args:
        model, tokenizer: the model in its trainable form (``learn.load_trainable``); an adapter is
            applied (rank/num_layers/scale) unless it already has one.
        steps, batch_size, learning_rate: per ``learn_from_text`` call.
        replay_share: share of each call's data drawn from the buffer (0 turns replay off).
        ewc_lambda: EWC's λ (0 turns it off); ``gamma``: decay of the old Fisher.
    """

    def __init__(self, model: nn.Module, tokenizer, *, rank: int = 8, num_layers: int = 16, scale: float = 20.0,
                 steps: int = 10, batch_size: int = 4, learning_rate: float = 1e-4, replay_share: float = 0.33,
                 ewc_lambda: float = 0.0, gamma: float = 1.0, buffer: Optional[ReplayBuffer] = None,
                 base_model: Optional[str] = None, seed: int = 0):
        self.model, self.tokenizer = model, tokenizer
        if not tree_flatten(model.trainable_parameters()) or not any(
                k.endswith("lora_a") for k, _ in tree_flatten(model.trainable_parameters())):
            mx.random.seed(seed)
            apply_lora(model, num_layers=num_layers, rank=rank, scale=scale)
        self.steps, self.batch_size, self.learning_rate = steps, batch_size, learning_rate
        if not 0 <= replay_share < 1:
            raise ValueError(f"[learner] replay_share must be in [0, 1) but got {replay_share}.")
        self.replay_share = replay_share
        self.buffer = buffer if buffer is not None else ReplayBuffer(seed=seed)
        self.ewc = EWC(lam=ewc_lambda, gamma=gamma)
        self.base_model = base_model
        self._calls = 0
        self._seed = seed

    def _tokenized(self, examples: Sequence[dict]) -> list:
        out = []
        for i, ex in enumerate(examples):
            ids, off = tokenize(ex, _fmt(ex, f"[learner] example {i}"), self.tokenizer)
            if len(ids) >= 2 and off < len(ids):
                out.append((ids, off))
        return out

    def learn_from_text(self, text: Union[str, dict, Sequence[Union[str, dict]]], domain: str = "general",
                        importance: float = 1.0, steps: Optional[int] = None) -> dict:
        """Train on ``text`` (a string, a JSONL-style example, or a list of them) now.

        Returns:
            ``{"loss_before", "loss_after"}`` on the new examples, ``"replayed"``, ``"seconds"``.
        """
        items = [text] if isinstance(text, (str, dict)) else list(text)
        new = [{"text": t} if isinstance(t, str) else t for t in items]
        if not new or any(isinstance(e, dict) and e.get("text") == "" for e in new):
            raise ValueError("[learner] learn_from_text needs non-empty text.")
        t0 = time.perf_counter()
        mixed = self.buffer.mix(new, self.replay_share) if self.replay_share > 0 else list(new)
        fresh, data = self._tokenized(new), self._tokenized(mixed)
        if not fresh:
            raise ValueError("[learner] the text is too short to learn from (fewer than 2 tokens).")
        before = evaluate(self.model, fresh, self.batch_size)
        self._calls += 1
        args = TrainingArgs(iters=steps or self.steps, batch_size=min(self.batch_size, len(data)),
                            learning_rate=self.learning_rate, steps_per_report=10**9, steps_per_eval=10**9,
                            seed=self._seed + self._calls)
        penalty = self.ewc.penalty if self.ewc.lam > 0 and self.ewc.fisher is not None else None
        train(self.model, data, args, penalty=penalty, report=lambda m: None)
        after = evaluate(self.model, fresh, self.batch_size)
        for e in new:
            self.buffer.add(e, domain, importance)
        return {"loss_before": before, "loss_after": after, "replayed": len(mixed) - len(new),
                "seconds": time.perf_counter() - t0}

    def consolidate(self, domain: Optional[str] = None, max_examples: int = 64) -> None:
        """Fold the Fisher of (up to ``max_examples`` of) ``domain``'s buffered examples into EWC."""
        examples: List[dict] = self.buffer.sample(max_examples, domain=domain)
        data = self._tokenized(examples)
        if not data:
            raise ValueError(f"[learner] no buffered examples of domain {domain!r} to consolidate.")
        fisher = fisher_diagonal(self.model, [make_batch([d]) for d in data], loss_fn)
        self.ewc.consolidate(self.model, fisher)

    def save(self, path: Union[str, Path]) -> Path:
        """Adapter + replay buffer + EWC state in one directory (``checkpoint.save_checkpoint``)."""
        return save_checkpoint(path, self.model, self.buffer, self.ewc, base_model=self.base_model)

    @classmethod
    def load(cls, path: Union[str, Path], model: nn.Module, tokenizer, **kwargs) -> "ContinualLearner":
        """A learner over ``model`` (the frozen base) restored from :meth:`save`'s directory."""
        config, buffer, ewc = load_checkpoint(path, model)
        learner = cls(model, tokenizer, buffer=buffer, base_model=config.get("base_model"), **kwargs)
        if ewc is not None:
            learner.ewc = ewc
        return learner
