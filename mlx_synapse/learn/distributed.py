"""Data-parallel adapter training on ``mx.distributed``: every process takes its shard of each batch.

All processes draw the same global batch (the trainer's seeded order); process ``r`` of
``n`` trains on examples ``r, r + n, ...`` of it. Each computes the gradient of its
shard's summed token loss, and one ``all_sum`` per step adds the gradients, the token
counts and the losses of all processes (one flat buffer); dividing by the global token
count gives the gradient of the global batch's mean token loss -- the step
:func:`learn.trainer.train` takes on the whole batch in one process, up to float
rounding. The adapter starts equal everywhere (rank 0's, sent by the same all-sum) and
every process applies the same update, so the adapters stay equal; rank 0 writes them.

    mlx.launch --backend ring -n 2 -- python -m mlx_synapse.learn.distributed --model DIR \\
        --data train.jsonl --adapter-path out --iters 100 --batch-size 8   # 2 processes here (ring, localhost)
    python -m mlx_synapse.learn.distributed ...                 # without a launcher: one process

MPI and NCCL (``--backend mpi|nccl``, ``mlx.launch --backend nccl`` on CUDA) run the
same code; only the ring backend on localhost is tested here.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, List, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from .trainer import TrainingArgs, iterate_batches, loss_fn, make_batch


def flat_all_sum(arrays: List[mx.array], all_sum: Callable[[mx.array], mx.array]) -> List[mx.array]:
    """``all_sum`` of several arrays through one flat float32 buffer (one collective per call)."""
    flat = mx.concatenate([a.astype(mx.float32).reshape(-1) for a in arrays])
    total = all_sum(flat)
    out, i = [], 0
    for a in arrays:
        out.append(total[i:i + a.size].reshape(a.shape).astype(a.dtype))
        i += a.size
    return out


def reduce_gradients(grads: dict, ntoks: mx.array, loss_sum: mx.array,
                     all_sum: Callable[[mx.array], mx.array]) -> tuple:
    """(mean gradient over all processes' tokens, global mean loss, global token count).

    ``grads``: this process's gradient of its *summed* token loss (mean loss x its tokens)."""
    names, values = zip(*tree_flatten(grads))
    *summed, tokens, loss = flat_all_sum([*values, ntoks.reshape(1), loss_sum.reshape(1)], all_sum)
    denom = mx.maximum(tokens, 1)
    mean = [g / denom.astype(g.dtype) for g in summed]
    return tree_unflatten(list(zip(names, mean))), (loss / denom)[0], tokens[0]


def train_data_parallel(model: nn.Module, train_set: list, args: TrainingArgs, group=None,
                        optimizer: Optional[optim.Optimizer] = None,
                        report: Callable[[str], None] = print) -> dict:
    """Train ``model``'s adapters for ``args.iters`` steps, each process on its shard of every batch.

    ``group``: an ``mx.distributed`` group (default: ``mx.distributed.init()``; a lone process
    is a group of one). ``args.batch_size`` is the global batch; ``grad_accum`` micro-batches
    per step as in the trainer. Returns ``{"train_loss": [(step, loss)], "step_seconds": [...]}``.
    """
    group = group if group is not None else mx.distributed.init()
    rank, size = group.rank(), group.size()
    if args.batch_size < size:
        raise ValueError(f"[distributed] batch-size {args.batch_size} is smaller than the {size} processes; "
                         f"each needs at least one example: use --batch-size {size} or more.")
    all_sum = (lambda x: mx.distributed.all_sum(x, group=group)) if size > 1 else (lambda x: x)
    if optimizer is None:
        optimizer = optim.AdamW(learning_rate=args.learning_rate, weight_decay=args.weight_decay)
    # the same starting adapter everywhere: rank 0's (the others contribute zeros)
    names, values = zip(*tree_flatten(model.trainable_parameters()))
    start = flat_all_sum([v if rank == 0 else mx.zeros_like(v) for v in values], all_sum)
    model.update(tree_unflatten(list(zip(names, start))))
    model.train()

    def shard_loss(m, *batch):
        loss, ntoks = loss_fn(m, *batch)
        return loss * ntoks, ntoks  # the summed token loss: shards add up to the global batch's

    grad_fn = nn.value_and_grad(model, shard_loss)
    batches = iterate_batches(train_set, args.batch_size, args.seed)
    history = {"train_loss": [], "step_seconds": []}
    for step in range(1, args.iters + 1):
        t0 = time.perf_counter()
        acc = loss_sum = ntoks_sum = None
        for _ in range(args.grad_accum):
            shard = next(batches)[rank::size]
            (loss, ntoks), grads = grad_fn(model, *make_batch(shard))
            acc = grads if acc is None else nn.utils.tree_map(mx.add, acc, grads)
            loss_sum = loss if loss_sum is None else loss_sum + loss
            ntoks_sum = ntoks if ntoks_sum is None else ntoks_sum + ntoks
            mx.eval(acc, loss_sum, ntoks_sum)
        mean, loss, tokens = reduce_gradients(acc, ntoks_sum.astype(mx.float32), loss_sum, all_sum)
        optimizer.update(model, mean)
        mx.eval(model.parameters(), optimizer.state, loss)
        history["step_seconds"].append(time.perf_counter() - t0)
        history["train_loss"].append((step, loss.item()))
        if rank == 0 and (step % args.steps_per_report == 0 or step == args.iters):
            report(f"step {step}: train loss {loss.item():.4f}, {int(tokens.item())} tokens over {size} "
                   f"process{'es' if size > 1 else ''}, {history['step_seconds'][-1]:.3f} s/step")
    model.eval()
    return history


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.learn.distributed",
                                description="Train a LoRA adapter data-parallel over mx.distributed processes.")
    p.add_argument("--model", default=None, help="model directory (default: the default model)")
    p.add_argument("--data", required=True, help="training JSONL (mlx-lm's chat / completions / text)")
    p.add_argument("--adapter-path", default="adapters", help="output directory, written by rank 0")
    p.add_argument("--dequantize", action="store_true", help="train over float32 copies of quantized layers")
    p.add_argument("--num-layers", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--scale", type=float, default=20.0)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8, help="the global batch, split over the processes")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"),
                   help="sgd: plain gradient steps (the runs of different process counts then agree to float "
                        "rounding; AdamW divides by sqrt(v) and turns rounding in near-zero gradients into "
                        "updates of up to the learning rate)")
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--steps-per-report", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="any", choices=("any", "ring", "mpi", "nccl"),
                   help="mx.distributed backend (any: the one the launcher set up)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        from . import apply_lora, load_trainable
        from .adapters import save_adapter
        from .data import load_dataset

        targs = TrainingArgs(iters=args.iters, batch_size=args.batch_size, grad_accum=args.grad_accum,
                             learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                             steps_per_report=args.steps_per_report, seed=args.seed)
        group = mx.distributed.init(backend=args.backend)
        model, tokenizer = load_trainable(args.model, dequantize=args.dequantize)
        train_set = load_dataset(args.data, tokenizer, True, args.max_seq_length)
        mx.random.seed(args.seed)
        apply_lora(model, num_layers=args.num_layers, rank=args.rank, scale=args.scale)
        say = (lambda m: print(m, file=sys.stderr, flush=True)) if group.rank() == 0 else (lambda m: None)
        say(f"data-parallel over {group.size()} process{'es' if group.size() > 1 else ''}: "
            f"{len(train_set)} examples, global batch {args.batch_size}")
        opt = (optim.SGD(learning_rate=args.learning_rate, weight_decay=args.weight_decay)
               if args.optimizer == "sgd" else None)
        history = train_data_parallel(model, train_set, targs, group, optimizer=opt, report=say)
        if group.rank() == 0:
            save_adapter(model, args.adapter_path,
                         extra={"model": str(args.model)} if args.model else None)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first, last = history["train_loss"][0][1], history["train_loss"][-1][1]
    say(f"done: train loss {first:.4f} -> {last:.4f}; adapter in {args.adapter_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
