"""``python -m mlx_synapse sleep --db PATH --user NAME``: consolidate a user's facts into an adapter.

Exit status: 0 the sleep was accepted (adapter written to ``<db>.sleep/<user>/``), 1 the gate
rolled it back (the previous adapter is untouched), 2 bad input (one line on stderr).
``--forget ID`` deletes memory ID from the bank and trains the adapter again without it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def setup_arg_parser() -> argparse.ArgumentParser:
    from .learn.bank_sleep import SleepConfig

    d = SleepConfig()
    p = argparse.ArgumentParser(prog="python -m mlx_synapse sleep", description=__doc__.split("\n")[0])
    p.add_argument("--db", required=True, help="the memory bank file")
    p.add_argument("--user", required=True)
    p.add_argument("--model", default=None, help="model directory, .gguf or hub id (default: the default model)")
    p.add_argument("--out", default=None, help="adapter directory (default: <db>.sleep/<user>/)")
    p.add_argument("--iters", type=int, default=d.iters)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--num-layers", type=int, default=d.num_layers)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--min-recall", type=float, default=d.min_recall)
    p.add_argument("--max-ppl-drift", type=float, default=d.max_ppl_drift, help="relative: 0.01 is +1%%")
    p.add_argument("--general-text", default=None, help="WikiText-2 raw test file (default: ../shared/data/eval/)")
    p.add_argument("--dequantize", action="store_true", help="train over float32 copies (faster on MLX's CPU)")
    p.add_argument("--forget", type=int, action="append", default=[], metavar="ID",
                   help="delete memory ID and re-sleep without it (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="pick the facts, build the pairs, estimate; no training")
    p.add_argument("--seed", type=int, default=0)
    return p


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    from .learn.bank_sleep import SleepConfig, forget_from_adapter, read_manifest, sleep_bank, sleep_dir
    from .memory.bank import MemoryBank

    db = Path(args.db).expanduser()
    if not db.is_file():
        return _fail(f"[sleep] memory bank {str(db)!r} does not exist; pass --db PATH of an existing bank.")
    try:
        config = SleepConfig(iters=args.iters, learning_rate=args.learning_rate, rank=args.rank,
                             num_layers=args.num_layers, batch_size=args.batch_size, min_recall=args.min_recall,
                             max_ppl_drift=args.max_ppl_drift, seed=args.seed)
        if not args.learning_rate > 0:
            raise ValueError(f"[sleep] learning-rate must be positive but got {args.learning_rate}.")
        bank = MemoryBank(db)
        out = Path(args.out) if args.out else sleep_dir(db, args.user)
        if not bank.list(user=args.user):
            raise ValueError(f"[sleep] user {args.user!r} has no memories in {db}; check --user.")
        if args.forget and read_manifest(out) is None:
            raise ValueError(f"[sleep] no consolidated adapter at {out}; nothing to forget from.")
    except (ValueError, OSError, KeyError) as e:
        return _fail(str(e).strip("'\""))
    try:
        from .learn import load_trainable

        model, tok = load_trainable(args.model, dequantize=args.dequantize)
    except Exception as e:  # any failure to load is one line, naming the model
        return _fail(f"[sleep] cannot load model {args.model or '(default)'}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    from tqdm import tqdm

    bar = None

    def say(msg: str) -> None:
        nonlocal bar
        print(msg, flush=True)
        m = re.search(r"estimated (\d+) s", msg)
        if m and int(m.group(1)) > 600:
            print(f"this backend is slow: the sleep will take about {int(m.group(1)) / 60:.0f} min "
                  "(fewer --iters, --dequantize on MLX's CPU, or a GPU make it shorter)", flush=True)
        if "estimated" in msg and not args.dry_run:
            bar = tqdm(total=config.iters, desc="sleep", unit="step", file=sys.stderr)

    kw = dict(config=config, base_model=str(args.model or "default"), general_text=args.general_text,
              dry_run=args.dry_run, report=say, progress=lambda s: bar.update(1) if bar else None)
    try:
        if args.forget:
            res = forget_from_adapter(args.forget, model, tok, adapter_dir=out, **kw)
            if not args.dry_run:
                bank.forget(args.forget, user=args.user)
        else:
            res = sleep_bank(bank, args.user, model, tok, adapter_dir=out, **kw)
    except (ValueError, OSError, KeyError) as e:
        return _fail(str(e).strip("'\""))
    finally:
        if bar is not None:
            bar.close()
        bank.close()
    for n in res.notes:
        print(n)
    if args.dry_run:
        print(f"dry run: {len(res.facts)} facts would be consolidated (estimated {res.estimate_s:.0f} s)")
        return 0
    if res.report is not None:
        print(res.report.summary())
    if res.accepted:
        print(f"adapter: {out}")
        return 0
    print(f"rolled back: {res.report.reason if res.report else 'rejected'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
