"""Sleep: train the adapter on what should be remembered, then keep it only if a gate passes.

:func:`consolidate` snapshots the adapter, measures recall and general-text
perplexity, trains (with replayed examples and EWC when given), measures again,
and rolls back to the snapshot -- bit for bit -- unless recall reaches the
threshold and perplexity drifts no more than allowed. Choosing which memories
to consolidate and building the training pairs from them sit above this
(the memory bank); this is the training-and-gate step they feed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .trainer import TrainingArgs, evaluate, train


@dataclass
class Gate:
    """Accept a sleep when ``recall >= min_recall`` and general perplexity rose by at most ``max_ppl_drift``
    (relative: 0.01 is +1%)."""

    min_recall: float = 0.9
    max_ppl_drift: float = 0.01


@dataclass
class SleepReport:
    accepted: bool
    reason: str
    recall_before: float
    recall_after: float
    ppl_before: float
    ppl_after: float
    steps: int
    seconds: float
    train_loss: List[Tuple[int, float]] = field(default_factory=list)

    @property
    def ppl_drift(self) -> float:
        return self.ppl_after / self.ppl_before - 1 if self.ppl_before > 0 else math.inf

    def summary(self) -> str:
        verdict = "kept" if self.accepted else f"rolled back ({self.reason})"
        return (f"sleep {verdict}: recall {self.recall_before:.2f} -> {self.recall_after:.2f}, general perplexity "
                f"{self.ppl_before:.3f} -> {self.ppl_after:.3f} ({100 * self.ppl_drift:+.2f}%), "
                f"{self.steps} steps in {self.seconds:.1f} s")

    def as_dict(self) -> dict:
        return dict(asdict(self), ppl_drift=self.ppl_drift)


def snapshot(model: nn.Module) -> dict:
    """Copies of the trainable (adapter) parameters."""
    return {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def restore(model: nn.Module, snap: dict) -> None:
    """Put a :func:`snapshot` back."""
    model.update(tree_unflatten(list(snap.items())))
    mx.eval(model.parameters())


def answer_recall(model: nn.Module, pairs: Sequence[Tuple[List[int], List[int]]]) -> float:
    """Share of (prompt ids, answer ids) whose answer greedy decoding would produce: every answer token
    is the argmax given the prompt and the answer so far (teacher-forced, one forward per pair)."""
    if not pairs:
        raise ValueError("[sleep] no question/answer pairs to measure recall on.")
    hits = 0
    for prompt, answer in pairs:
        ids = mx.array([list(prompt) + list(answer)])
        logits = model(ids[:, :-1])[0, len(prompt) - 1 :]
        hits += bool(mx.all(mx.argmax(logits, axis=-1) == ids[0, len(prompt) :]).item())
    return hits / len(pairs)


def consolidate(
    model: nn.Module,
    train_set: list,
    args: TrainingArgs,
    recall: Callable[[nn.Module], float],
    general_set: list,
    gate: Gate = Gate(),
    penalty: Optional[Callable[[nn.Module], mx.array]] = None,
    report: Callable[[str], None] = lambda m: None,
    replay_set: Optional[list] = None,
    replay_per_batch: int = 0,
    distill: float = 0.0,
    check_every: int = 0,
) -> SleepReport:
    """Train the model's adapters on ``train_set`` and keep the result only if ``gate`` passes.

    Args:
        train_set: tokenized examples (``data.load_dataset``), replayed ones already mixed in.
        recall: ``model -> share of held-out questions answered`` (e.g. :func:`answer_recall`).
        general_set: tokenized general text; its perplexity must not drift past the gate.
        penalty: EWC's ``penalty`` (or None).
        replay_set, replay_per_batch, distill: general text in every batch, fitted or (``distill``
            > 0) held to the base model's distribution (:func:`.trainer.train`).
        check_every: > 0: the gate is measured every that many steps and training stops at the
            first pass (the fewest steps that reach the recall, the least drift).

    Returns:
        The report; on rejection the adapter holds exactly its weights from before.
    """
    if not tree_flatten(model.trainable_parameters()):
        raise ValueError("[sleep] the model has no adapter to train; apply_lora(model, ...) first.")
    t0 = time.perf_counter()
    snap = snapshot(model)
    model.eval()
    ppl_before = math.exp(evaluate(model, general_set, args.batch_size))
    recall_before = recall(model)
    checks = []

    def passes(step: int) -> bool:
        ppl = math.exp(min(evaluate(model, general_set, args.batch_size), 700.0))
        rec = recall(model)
        checks.append((step, rec, ppl))
        report(f"step {step}: gate recall {rec:.2f}, perplexity {ppl:.3f} ({100 * (ppl / ppl_before - 1):+.2f}%)")
        return rec >= gate.min_recall and ppl / ppl_before - 1 <= gate.max_ppl_drift

    if check_every > 0:
        args = TrainingArgs(**dict(vars(args), steps_per_eval=check_every))
    history = train(model, train_set, args, penalty=penalty, report=report, replay_set=replay_set,
                    replay_per_batch=replay_per_batch, distill=distill,
                    should_stop=passes if check_every > 0 else None)
    model.eval()
    steps = history.get("stopped_at", args.iters)
    if checks and checks[-1][0] == steps:
        recall_after, ppl_after = checks[-1][1], checks[-1][2]
    else:
        ppl_after = math.exp(min(evaluate(model, general_set, args.batch_size), 700.0))
        recall_after = recall(model)
    drift = ppl_after / ppl_before - 1
    reasons = []
    if not all(math.isfinite(v) for _, v in history["train_loss"]) or not math.isfinite(ppl_after):
        reasons.append("training diverged")
    if recall_after < gate.min_recall:
        reasons.append(f"recall {recall_after:.2f} < {gate.min_recall:.2f}")
    if not drift <= gate.max_ppl_drift:
        reasons.append(f"perplexity drift {100 * drift:+.2f}% > {100 * gate.max_ppl_drift:.2f}%")
    if reasons:
        restore(model, snap)
    out = SleepReport(
        accepted=not reasons, reason="; ".join(reasons) or "gate passed", recall_before=recall_before,
        recall_after=recall_after, ppl_before=ppl_before, ppl_after=ppl_after, steps=steps,
        seconds=time.perf_counter() - t0, train_loss=history["train_loss"],
    )
    report(out.summary())
    return out
