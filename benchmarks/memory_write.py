"""Latency of a durable ``MemoryBank.add``, encoding excluded, and of the encoding itself.

One run, the same 30-word texts for every row:

* ``bank.add`` into a bank already holding ``--prefill`` entries of the same user:
  the near-duplicate search over the user's INT8 index, the surprise gate, one SQLite
  transaction committed with ``synchronous=FULL`` (fsync), and the index append. The
  encoder is replaced by a lookup of vectors computed beforehand, so encoding is not
  timed here.
* the floor it is compared with: a bare ``sqlite3`` insert of the same text and
  vector bytes into a WAL database with ``synchronous=FULL``, one commit per row.
* the encoding of one such text by all-MiniLM-L6-v2 (NumPy backend), reported apart.

Usage::

    python -m mlx_synapse.benchmarks.memory_write --prefill 10000 --adds 300
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time

import numpy as np

from .common import commit, machine

WORDS = (
    "morning coffee sister porto garden cat doctor tuesday meeting project budget flight "
    "lisbon allergy peanuts piano lesson birthday gift manager team deadline running shoes "
    "marathon recipe pasta tomato basil neighbour car repair insurance appointment dentist "
    "holiday beach mountain hiking trail book novel author library concert ticket friend "
    "wedding anniversary dinner restaurant vegetarian spicy curry train station ticket "
    "password laptop phone charger daughter school teacher homework football practice"
).split()


def texts(n: int, seed: int, words: int = 30) -> list:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, words)) + f" ({seed}-{i})" for i in range(n)]


class Lookup:
    """An encoder that returns vectors computed beforehand (so encoding is not timed)."""

    def __init__(self, table: dict, dim: int, name: str):
        self.table, self.dim, self.name = table, dim, name

    def __call__(self, batch):
        return np.stack([self.table[t] for t in batch])


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefill", type=int, default=10000, help="entries already in the bank")
    p.add_argument("--adds", type=int, default=300, help="timed adds")
    p.add_argument("--encoder", choices=("minilm", "random"), default="minilm",
                   help="vectors from all-MiniLM-L6-v2, or random unit vectors (dim 384)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mlx_synapse.memory.bank import MemoryBank

    pre, timed = texts(args.prefill, args.seed), texts(args.adds, args.seed + 1)
    enc_times = []
    if args.encoder == "minilm":
        from mlx_synapse.memory.encoders import MiniLMEncoder

        real = MiniLMEncoder(backend="numpy")
        dim, name = real.dim, real.name
        vecs = np.concatenate([real(pre[i:i + 512]) for i in range(0, len(pre), 512)] + [real(timed)])
        real(timed[:5])  # warm
        for t in timed[:100]:
            tic = time.perf_counter()
            real([t])
            enc_times.append(time.perf_counter() - tic)
    else:
        dim, name = 384, "random-unit-384"
        vecs = np.random.default_rng(args.seed).standard_normal((len(pre) + len(timed), dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    table = dict(zip(pre + timed, vecs))

    with tempfile.TemporaryDirectory() as d:
        bank = MemoryBank(os.path.join(d, "bench.db"), Lookup(table, dim, name), backend="numpy")
        for i in range(0, len(pre), 1000):
            bank.add_many(pre[i:i + 1000], user="u")
        bank.search(timed[0], 1, user="u", touch=False)  # index loaded, kernel compiled
        add_times = []
        for t in timed:
            tic = time.perf_counter()
            bank.add(t, user="u", surprise=3.0, force=True)
            add_times.append(time.perf_counter() - tic)
        bank.close()

        db = sqlite3.connect(os.path.join(d, "floor.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, user TEXT, text TEXT, vector BLOB)")
        floor = []
        for t in timed:
            blob = table[t].astype("<f2").tobytes()
            tic = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (user, text, vector) VALUES (?, ?, ?)", ("u", t, blob))
            db.execute("COMMIT")
            floor.append(time.perf_counter() - tic)
        db.close()

    print(f"# memory writes — {machine()}; commit {commit()}")
    print(f"# {args.adds} adds of 30-word texts into a bank of {args.prefill} entries (dim {dim}, {name})")
    print("| what | p50 ms | p90 ms |")
    print("| --- | --- | --- |")
    print(f"| MemoryBank.add (durable, encoding excluded) | {_pct(add_times, 50):.3f} | {_pct(add_times, 90):.3f} |")
    print(f"| bare sqlite3 insert + commit (synchronous=FULL) | {_pct(floor, 50):.3f} | {_pct(floor, 90):.3f} |")
    if enc_times:
        print(f"| MiniLM encoding of one text (NumPy) | {_pct(enc_times, 50):.3f} | {_pct(enc_times, 90):.3f} |")
    ratio = statistics.median(add_times) / statistics.median(floor)
    print(f"add / bare insert (p50): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
