"""``python -m mlx_synapse.learn.train --data train.jsonl``: train a LoRA/DoRA adapter.

Data in mlx-lm's chat / completions / text JSONL (a file, or a directory with
``train.jsonl`` and optionally ``valid.jsonl``); the adapter is written in
mlx-lm's format to ``--adapter-path`` (final weights, and a numbered
checkpoint every ``--save-every`` steps). Quantized models train as QLoRA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.learn.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the default model)")
    p.add_argument("--data", required=True, help="train.jsonl, or a directory with train.jsonl [+ valid.jsonl]")
    p.add_argument("--valid", default=None, help="validation JSONL (default: valid.jsonl beside the data)")
    p.add_argument("--adapter-path", default="adapters", help="output directory (default: ./adapters)")
    p.add_argument("--resume", default=None, help="adapter directory to start from")
    p.add_argument("--dequantize", action="store_true",
                   help="train over float32 copies of quantized layers (faster on MLX's CPU backend)")
    p.add_argument("--fine-tune-type", choices=("lora", "dora"), default="lora")
    p.add_argument("--num-layers", type=int, default=16, help="blocks from the end that get adapters (-1: all)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--scale", type=float, default=20.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--keys", default=None, help="comma-separated layers inside a block (default: every linear)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay")
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--no-mask-prompt", dest="mask_prompt", action="store_false",
                   help="train on the prompt tokens too")
    p.add_argument("--steps-per-report", type=int, default=10)
    p.add_argument("--steps-per-eval", type=int, default=50)
    p.add_argument("--val-batches", type=int, default=25, help="-1: the whole validation set")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    return p


def _data_files(data: str, valid: Optional[str]):
    path = Path(data)
    if path.is_dir():
        train = path / "train.jsonl"
        if not train.is_file():
            raise FileNotFoundError(f"[train] {path} has no train.jsonl; pass the file or a directory holding it.")
        if valid is None and (path / "valid.jsonl").is_file():
            valid = str(path / "valid.jsonl")
        return train, valid
    return path, valid


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from . import apply_lora, load_adapter, load_trainable
        from .data import load_dataset
        from .trainer import TrainingArgs, train

        targs = TrainingArgs(
            iters=args.iters, batch_size=args.batch_size, grad_accum=args.grad_accum,
            learning_rate=args.learning_rate, weight_decay=args.weight_decay,
            steps_per_report=args.steps_per_report, steps_per_eval=args.steps_per_eval,
            val_batches=args.val_batches, save_every=args.save_every, adapter_path=args.adapter_path,
            seed=args.seed,
        )
        if args.max_seq_length < 2:
            raise ValueError(f"[train] max-seq-length must be at least 2 but got {args.max_seq_length}.")
        train_file, valid_file = _data_files(args.data, args.valid)
        model, tokenizer = load_trainable(args.model, dequantize=args.dequantize)
        train_set = load_dataset(train_file, tokenizer, args.mask_prompt, args.max_seq_length)
        valid_set = load_dataset(valid_file, tokenizer, args.mask_prompt, args.max_seq_length) if valid_file else None
        mx.random.seed(args.seed)
        if args.resume:
            load_adapter(model, args.resume)
        else:
            keys = [k.strip() for k in args.keys.split(",")] if args.keys else None
            apply_lora(model, num_layers=args.num_layers, rank=args.rank, scale=args.scale, dropout=args.dropout,
                       keys=keys, use_dora=args.fine_tune_type == "dora")
        n_train = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        print(f"training {n_train:,} adapter parameters on {len(train_set)} examples"
              f"{f', validating on {len(valid_set)}' if valid_set else ''}", file=sys.stderr)
        history = train(model, train_set, targs, valid_set, report=lambda m: print(m, file=sys.stderr),
                        adapter_extra={"model": str(args.model)} if args.model else None)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    first, last = history["train_loss"][0][1], history["train_loss"][-1][1]
    print(f"done: train loss {first:.4f} -> {last:.4f}; adapter in {args.adapter_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
