"""Online elastic weight consolidation over the adapter's parameters.

After a task, the diagonal empirical Fisher ``F = mean_i g_i ** 2`` (``g_i``
the gradient of example ``i``'s loss) says how much each adapter parameter
mattered; later training pays ``lam * sum F (theta - theta*) ** 2`` for moving
them away from the values ``theta*`` they had. Online EWC keeps one running
Fisher, ``F <- gamma * F + F_new``, and re-anchors ``theta*`` after each task.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten


def fisher_diagonal(model: nn.Module, batches: Iterable[tuple], loss: Callable) -> Dict[str, mx.array]:
    """Mean squared gradient of ``loss(model, *batch)`` over ``batches`` (one example each for the
    empirical Fisher), for every trainable parameter. ``loss`` may return (value, extra)."""
    def scalar(m, *b):
        v = loss(m, *b)
        return v[0] if isinstance(v, tuple) else v

    grad_fn = nn.value_and_grad(model, scalar)
    total, n = None, 0
    for batch in batches:
        _, g = grad_fn(model, *batch)
        sq = {k: v.astype(mx.float32) ** 2 for k, v in tree_flatten(g)}
        total = sq if total is None else {k: total[k] + sq[k] for k in total}
        mx.eval(total)
        n += 1
    if total is None:
        raise ValueError("[ewc] no batches to estimate the Fisher information from.")
    return {k: v / n for k, v in total.items()}


class EWC:
    """The penalty and its running Fisher.

    Args:
        lam: weight of the penalty (λ).
        gamma: decay of the old Fisher at each consolidation (1: plain sum over tasks).
    """

    def __init__(self, lam: float = 1.0, gamma: float = 1.0):
        if lam < 0 or not 0 <= gamma <= 1:
            raise ValueError(f"[ewc] lam must be >= 0 and gamma in [0, 1] but got lam={lam}, gamma={gamma}.")
        self.lam, self.gamma = float(lam), float(gamma)
        self.fisher: Optional[Dict[str, mx.array]] = None
        self.anchor: Optional[Dict[str, mx.array]] = None

    def consolidate(self, model: nn.Module, fisher: Dict[str, mx.array]) -> None:
        """Fold in a task's Fisher and anchor at the model's current adapter values."""
        if self.fisher is None:
            self.fisher = dict(fisher)
        else:
            self.fisher = {k: self.gamma * self.fisher[k] + fisher[k] for k in self.fisher}
        self.anchor = {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}
        mx.eval(self.fisher, self.anchor)

    def penalty(self, model: nn.Module) -> mx.array:
        """``lam * sum F (theta - theta*) ** 2`` over the trainable parameters (0 before any task)."""
        if self.fisher is None:
            return mx.array(0.0)
        total = mx.array(0.0)
        for k, v in tree_flatten(model.trainable_parameters()):
            if k in self.fisher:
                total = total + mx.sum(self.fisher[k] * (v.astype(mx.float32) - self.anchor[k]) ** 2)
        return self.lam * total

    def state(self) -> dict:
        """Arrays to save (safetensors) for a checkpoint: ``fisher.*`` and ``anchor.*``."""
        if self.fisher is None:
            return {}
        out = {f"fisher.{k}": v for k, v in self.fisher.items()}
        out.update({f"anchor.{k}": v for k, v in self.anchor.items()})
        return out

    def load_state(self, arrays: dict) -> None:
        self.fisher = {k[7:]: v for k, v in arrays.items() if k.startswith("fisher.")} or None
        self.anchor = {k[7:]: v for k, v in arrays.items() if k.startswith("anchor.")} or None


def unflatten(flat: Dict[str, mx.array]):
    """A flat name -> array dict as the nested tree ``model.update`` takes."""
    return tree_unflatten(list(flat.items()))
