"""Memory-bank vector search: VectorIndex (INT8 cosine) against FAISS IndexFlatIP, one run.

A random unit-norm bank and random unit queries; each query is searched alone
(the bank's case: one user turn, one query).  Timed per query, warm-up excluded
(numba compile / MLX mirror packing happen there):

* ``VectorIndex.search`` on ``--backend`` (INT8 rows, kernel + top-k);
* FAISS ``IndexFlatIP`` on the same vectors in float32 (exact inner product);
* NumPy float32 BLAS ``bank @ q`` + ``argpartition`` (the obvious baseline).

Recall@k is against the exact float32 top-k of the unquantized vectors.

Usage::

    python -m mlx_synapse.benchmarks.memory_search --n 100000 --dim 384 --k 8 --queries 200
    python -m mlx_synapse.benchmarks.memory_search --backend mlx --n 20000 --queries 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .common import commit, machine


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def time_queries(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, warmup: int) -> dict:
    """Per-query latency (ms) of ``search(q) -> ids`` and the ids found; warm-up not counted."""
    for q in queries[:warmup]:
        search(q)
    times, found = [], []
    for q in queries:
        tic = time.perf_counter()
        ids = search(q)  # returns NumPy arrays: any device work has finished
        times.append((time.perf_counter() - tic) * 1e3)
        found.append(np.asarray(ids).reshape(-1))
    times.sort()
    return {"p50_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
            "trials_ms": times, "ids": found}


def recall(found: list, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)]))


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.benchmarks.memory_search",
                                description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="vectors in the bank")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--queries", type=int, default=200, help="timed single queries")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "mlx"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every trial here")
    return p


def main(argv: Optional[list] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    from mlx_synapse.memory.index import VectorIndex

    rng = np.random.default_rng(args.seed)
    bank = unit_rows(rng, args.n, args.dim)
    queries = unit_rows(rng, args.queries, args.dim)
    k = args.k
    exact = np.argsort(-(queries @ bank.T), axis=1, kind="stable")[:, :k]

    index = VectorIndex(args.dim, backend=args.backend)
    tic = time.perf_counter()
    index.add_vectors(np.arange(args.n, dtype=np.int64), bank)
    build_s = time.perf_counter() - tic
    # (search, bytes held after the searches: the MLX mirror is packed on the first one)
    runs = {f"VectorIndex[{index.backend}] int8": (lambda q: index.search(q, k)[0], lambda: index.nbytes)}
    try:
        import faiss

        flat = faiss.IndexFlatIP(args.dim)
        flat.add(bank)
        runs["FAISS IndexFlatIP fp32"] = (lambda q: flat.search(q[None], k)[1], lambda: bank.nbytes)
        peer = "FAISS IndexFlatIP fp32"
    except ImportError:
        print("# faiss is not installed (pip install faiss-cpu): comparing with NumPy BLAS only")
        peer = "NumPy BLAS fp32 + argpartition"

    def blas(q):
        s = bank @ q
        top = np.argpartition(-s, k - 1)[:k]
        return top[np.argsort(-s[top])]

    runs["NumPy BLAS fp32 + argpartition"] = (blas, lambda: bank.nbytes)

    report = {"machine": machine(), "commit": commit(), "n": args.n, "dim": args.dim, "k": k,
              "queries": args.queries, "backend": index.backend, "seed": args.seed,
              "index_build_s": build_s, "results": {}}
    results = {}
    for name, (search, nbytes) in runs.items():
        r = time_queries(search, queries, args.warmup)
        r["recall"] = recall(r.pop("ids"), exact, k)
        r["bytes"] = nbytes()
        results[name] = r
    print(f"# {report['machine']}; commit {report['commit']}")
    print(f"# {args.n} x {args.dim} unit vectors, top-{k}, {args.queries} single queries "
          f"(+{args.warmup} warm-up), seed {args.seed}; index built in {build_s:.2f} s")
    print(f"| search | p50 ms | p90 ms | recall@{k} | MB held | speed-up vs {peer.split(' ')[0]} (p50) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        ratio = results[peer]["p50_ms"] / r["p50_ms"]
        print(f"| {name} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['recall']:.3f} | "
              f"{r['bytes'] / 2**20:.1f} | {ratio:.2f}x |")
    report["results"] = results
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
