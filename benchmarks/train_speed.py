"""``python -m mlx_synapse.benchmarks.train_speed``: time one adapter training step.

One optimizer step (forward, backward through the frozen base into the
adapters, AdamW update) on ``--batch-size`` windows of ``--seq-len`` tokens of
WikiText-2 (../shared/data), after ``--warmup`` uncounted steps; the median of
``--trials`` steps is printed with the device and tokens/s. ``--form q4``
trains on the 4-bit weights as stored (QLoRA), ``float32`` on them expanded.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

from .common import EVAL_DIR

WIKITEXT = EVAL_DIR / "wikitext2_raw_test.txt"


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.benchmarks.train_speed", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the default model)")
    p.add_argument("--form", choices=("q4", "float32"), default="q4")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--num-layers", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--text", default=str(WIKITEXT), help="text file the token windows come from")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    text = Path(args.text)
    if not text.is_file():
        print(f"error: {text} not found; pass --text FILE (WikiText-2 is in ../shared/data/eval).", file=sys.stderr)
        return 2
    import logging

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    # the whole text is tokenized at once on purpose (then cut into windows): no length warning
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)

    from mlx_synapse.learn import apply_lora, load_trainable
    from mlx_synapse.learn.trainer import loss_fn
    model, tok = load_trainable(args.model, dequantize=args.form == "float32")
    mx.random.seed(0)
    apply_lora(model, num_layers=args.num_layers, rank=args.rank)
    ids = tok.encode(text.read_text(encoding="utf-8")[:200_000])
    n = args.batch_size * args.seq_len
    windows = [ids[i : i + n] for i in range(0, len(ids) - n, n)]
    opt = optim.AdamW(learning_rate=1e-5)
    grad_fn = nn.value_and_grad(model, loss_fn)
    zeros = mx.zeros((args.batch_size,), mx.int32)
    lengths = mx.full((args.batch_size,), args.seq_len, mx.int32)
    times = []
    for step in range(args.warmup + args.trials):
        batch = mx.array(windows[step % len(windows)]).reshape(args.batch_size, args.seq_len)
        t0 = time.perf_counter()
        (loss, _), grads = grad_fn(model, batch, zeros, lengths)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    toks = args.batch_size * (args.seq_len - 1)
    result = {
        "device": f"{mx.default_device()} ({platform.processor() or platform.machine()})", "form": args.form,
        "rank": args.rank, "num_layers": args.num_layers, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "step_seconds_median": med, "step_seconds": times, "tokens_per_second": toks / med,
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
    }
    print(f"{result['device']} {args.form} rank {args.rank} x {args.num_layers} blocks, batch "
          f"{args.batch_size} x {args.seq_len}: {med:.3f} s/step (median of {len(times)}), "
          f"{toks / med:.0f} trained tokens/s, peak {result['peak_memory_gb']:.2f} GB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
