"""The adapter trainer: masked next-token loss, AdamW, gradient accumulation, checkpoints, validation.

Only adapter parameters train (``apply_lora`` freezes the rest). Accumulated
gradients are weighted by each micro-batch's trained-token count, so
``grad_accum`` micro-batches of ``b`` examples take the same step as one
batch of ``grad_accum * b`` (up to float rounding).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from .adapters import save_adapter
from .lora import adapters_off


@dataclass
class TrainingArgs:
    iters: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    steps_per_report: int = 10
    steps_per_eval: int = 50
    val_batches: int = 25  # -1: the whole validation set
    save_every: int = 100
    adapter_path: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        for name in ("iters", "batch_size", "grad_accum", "steps_per_report", "steps_per_eval", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"[train] {name.replace('_', '-')} must be at least 1 but got {getattr(self, name)}.")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"[train] learning-rate must be a positive number but got {self.learning_rate}.")
        if self.weight_decay < 0:
            raise ValueError(f"[train] weight-decay must be >= 0 but got {self.weight_decay}.")


def make_batch(examples: List[Tuple[List[int], int]]) -> Tuple[mx.array, mx.array, mx.array]:
    """Pad ``[(ids, offset)]`` into (tokens (B, L), offsets (B,), lengths (B,))."""
    L = max(len(ids) for ids, _ in examples)
    tokens = np.zeros((len(examples), L), np.int32)
    for i, (ids, _) in enumerate(examples):
        tokens[i, : len(ids)] = ids
    offsets = mx.array([o for _, o in examples])
    lengths = mx.array([len(ids) for ids, _ in examples])
    return mx.array(tokens), offsets, lengths


def loss_fn(model: nn.Module, tokens: mx.array, offsets: mx.array, lengths: mx.array) -> Tuple[mx.array, mx.array]:
    """Mean cross-entropy over trained targets, and their count.

    Target ``j`` (token ``j + 1``, predicted at position ``j``) counts when
    ``offset <= j + 1 < length``: the prompt and the padding are masked.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs).astype(mx.float32)
    pos = mx.arange(1, targets.shape[1] + 1)[None]
    mask = (pos >= offsets[:, None]) & (pos < lengths[:, None])
    ce = nn.losses.cross_entropy(logits, targets) * mask
    ntoks = mask.sum()
    return ce.sum() / mx.maximum(ntoks, 1), ntoks


def distill_loss(model: nn.Module, tokens: mx.array, lengths: mx.array, base_logp: mx.array) -> Tuple[mx.array, mx.array]:
    """Mean KL(base || adapted) per predicted token of general text, and the token count.

    ``base_logp``: the base model's log-probabilities on ``tokens[:, :-1]`` (:func:`base_log_probs`).
    Pulling the adapted model's distribution back to the base one on text unrelated to what is
    being learned is what keeps general ability: plain cross-entropy on that text would instead
    fit the text itself.
    """
    logits = model(tokens[:, :-1]).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    mask = mx.arange(1, tokens.shape[1])[None] < lengths[:, None]
    kl = (mx.exp(base_logp) * (base_logp - logp)).sum(-1) * mask
    n = mask.sum()
    return kl.sum() / mx.maximum(n, 1), n


def base_log_probs(model: nn.Module, tokens: mx.array) -> mx.array:
    """Log-probabilities of the model with its adapters switched off, outside any gradient."""
    with adapters_off(model):
        logits = model(tokens[:, :-1]).astype(mx.float32)
    return mx.stop_gradient(logits - mx.logsumexp(logits, axis=-1, keepdims=True))


def replay_loss(model: nn.Module, batch: tuple, rep: Optional[tuple], base_logp: Optional[mx.array],
                distill: float) -> Tuple[mx.array, mx.array]:
    """Loss of a batch beside its replayed general rows ``rep`` (both :func:`make_batch`
    triples; ``rep`` None: the batch alone): with ``distill > 0`` the batch's cross-entropy
    plus ``distill`` x KL(base || adapted) on ``rep`` (``base_logp``: :func:`base_log_probs`),
    else cross-entropy pooled over both by token. Returns (loss, the batch's trained tokens
    -- both batches' when pooled)."""
    loss, ntoks = loss_fn(model, *batch)
    if rep is None:
        return loss, ntoks
    if distill > 0:
        return loss + distill * distill_loss(model, rep[0], rep[2], base_logp)[0], ntoks
    l2, n2 = loss_fn(model, *rep)
    return (loss * ntoks + l2 * n2) / mx.maximum(ntoks + n2, 1), ntoks + n2


def iterate_batches(dataset: list, batch_size: int, seed: int, loop: bool = True) -> Iterator[list]:
    """Batches of examples in an order fixed by ``seed``: a new permutation each pass."""
    if len(dataset) < batch_size:
        raise ValueError(
            f"[train] batch-size {batch_size} is larger than the {len(dataset)} examples; lower --batch-size."
        )
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(dataset))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield [dataset[j] for j in order[i : i + batch_size]]
        if not loop:
            return


def evaluate(model: nn.Module, dataset: list, batch_size: int, num_batches: int = -1) -> float:
    """Token-weighted mean loss over the first ``num_batches`` batches (-1: all) in file order."""
    total, count = 0.0, 0
    for n, i in enumerate(range(0, len(dataset), batch_size)):
        if 0 <= num_batches <= n:
            break
        loss, ntoks = loss_fn(model, *make_batch(dataset[i : i + batch_size]))
        mx.eval(loss, ntoks)
        total += loss.item() * ntoks.item()
        count += ntoks.item()
    return total / max(count, 1)


def train(
    model: nn.Module,
    train_set: list,
    args: TrainingArgs,
    valid_set: Optional[list] = None,
    optimizer: Optional[optim.Optimizer] = None,
    report: Callable[[str], None] = print,
    adapter_extra: Optional[dict] = None,
    penalty: Optional[Callable[[nn.Module], mx.array]] = None,
    replay_set: Optional[list] = None,
    replay_per_batch: int = 0,
    distill: float = 0.0,
    should_stop: Optional[Callable[[int], bool]] = None,
) -> dict:
    """Train the adapters on ``model`` for ``args.iters`` optimizer steps.

    ``penalty(model)``: a scalar added to every micro-batch's loss (EWC's
    ``EWC.penalty``); the reported train loss includes it.
    ``replay_set``: general examples, ``replay_per_batch`` of them in every micro-batch beside
    ``batch_size - replay_per_batch`` of ``train_set``. With ``distill > 0`` they are not fitted:
    their loss is ``distill`` x KL(base || adapted) (:func:`distill_loss`); else plain
    cross-entropy, pooled with the rest.
    ``should_stop(step)``: asked every ``steps_per_eval`` steps; True ends training there.

    Returns:
        ``{"train_loss": [(step, loss)], "val_loss": [(step, loss)], "step_seconds": [...], "tokens": n}``.
    """
    if optimizer is None:
        optimizer = optim.AdamW(learning_rate=args.learning_rate, weight_decay=args.weight_decay)
    model.train()
    n_rep = replay_per_batch if replay_set else 0
    if not 0 <= n_rep < args.batch_size:
        raise ValueError(f"[train] replay-per-batch must be in [0, batch-size) but got {replay_per_batch}.")
    if distill < 0:
        raise ValueError(f"[train] distill must be >= 0 but got {distill}.")

    def total_loss(m, batch, rep, base_logp):
        loss, ntoks = replay_loss(m, batch, rep, base_logp, distill)
        return (loss + penalty(m) if penalty is not None else loss), ntoks

    grad_fn = nn.value_and_grad(model, total_loss)
    batches = iterate_batches(train_set, args.batch_size - n_rep, args.seed)
    rep_batches = iterate_batches(replay_set, n_rep, args.seed + 1) if n_rep else None
    history = {"train_loss": [], "val_loss": [], "step_seconds": [], "tokens": 0}
    out = Path(args.adapter_path) if args.adapter_path else None
    extra = adapter_extra or {}

    def validate(step: int):
        if valid_set:
            model.eval()
            v = evaluate(model, valid_set, args.batch_size, args.val_batches)
            model.train()
            history["val_loss"].append((step, v))
            report(f"step {step}: val loss {v:.4f}")

    validate(0)
    window_loss, window_toks = 0.0, 0
    for step in range(1, args.iters + 1):
        t0 = time.perf_counter()
        acc, step_loss, step_toks = None, 0.0, 0
        for _ in range(args.grad_accum):
            rep = make_batch(next(rep_batches)) if rep_batches is not None else None
            base_logp = base_log_probs(model, rep[0]) if rep is not None and distill > 0 else None
            (loss, ntoks), grads = grad_fn(model, make_batch(next(batches)), rep, base_logp)
            # weight by tokens: sum over micro-batches of (mean loss * tokens) / total tokens
            grads = tree_map(lambda g: g * ntoks.astype(g.dtype), grads)
            acc = grads if acc is None else tree_map(mx.add, acc, grads)
            mx.eval(acc, loss, ntoks)
            step_loss += loss.item() * ntoks.item()
            step_toks += ntoks.item()
        acc = tree_map(lambda g: g / max(step_toks, 1), acc)
        optimizer.update(model, acc)
        mx.eval(model.parameters(), optimizer.state)
        history["step_seconds"].append(time.perf_counter() - t0)
        history["train_loss"].append((step, step_loss / max(step_toks, 1)))
        history["tokens"] += step_toks
        window_loss += step_loss
        window_toks += step_toks
        if step % args.steps_per_report == 0 or step == args.iters:
            secs = sum(history["step_seconds"][-args.steps_per_report:])
            n = min(args.steps_per_report, len(history["step_seconds"]))
            report(f"step {step}: train loss {window_loss / max(window_toks, 1):.4f}, "
                   f"{secs / n:.3f} s/step, {window_toks / max(secs, 1e-9):.0f} tok/s")
            window_loss, window_toks = 0.0, 0
        stop = False
        if step % args.steps_per_eval == 0 or step == args.iters:
            validate(step)
            if should_stop is not None and step < args.iters:
                model.eval()
                stop = bool(should_stop(step))
                model.train()
        if out is not None and (step % args.save_every == 0 or step == args.iters):
            save_adapter(model, out, extra=extra)
            save_adapter(model, out, weights_name=f"{step:07d}_adapters.safetensors", extra=extra)
        if stop:
            history["stopped_at"] = step
            if out is not None and step % args.save_every:
                save_adapter(model, out, extra=extra)
            break
    model.eval()
    return history
