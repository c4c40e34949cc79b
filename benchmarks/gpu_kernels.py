"""GPU kernels of ``mlx_synapse.kernels.gpu`` against MLX's own ops, same run, same data.

    python -m mlx_synapse.benchmarks.gpu_kernels --out results/gpu_kernels.json

* affine GEMV/GEMM: ``affine_qmm`` vs ``mx.quantized_matmul`` at the default model's
  shapes (SmolLM2-135M: hidden 576, intermediate 1536, k/v 192, vocabulary 49152;
  4-bit, group 32, float16 activations as the converted GGUF has), M = 1, 2, 4, 8, 16.
  Each timing evaluates ``--batch`` independent products (inputs rotated) in one
  ``mx.eval`` and divides: per-product device time plus MLX's per-op dispatch,
  the same for both; the median of ``--trials``.
* INT8 cosine top-k over N x D (100,000 x 384): the kernel + host merge vs the
  ``quantized_matmul`` path of ``kernels/int8_search.AffineInt8Mirror.topk``,
  one query per search, ids and scores returned to the host; p50 / p90 of ``--trials``.

Every result is checked against the float64 NumPy reference before it is timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

SHAPES = {  # name: (N out, K in)
    "q_proj/o_proj": (576, 576),
    "k_proj/v_proj": (192, 576),
    "gate/up": (1536, 576),
    "down": (576, 1536),
    "lm_head": (49152, 576),
}


def _median_time(fn, trials: int) -> float:
    fn()
    ts = []
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_qmm(ms, bits, group_size, batch, trials, dtype_name):
    import mlx.core as mx

    from mlx_synapse.kernels.gpu import affine_qmm as aq

    dt = getattr(mx, dtype_name)
    rows = []
    for name, (n, k) in SHAPES.items():
        w = mx.random.normal((n, k), key=mx.random.key(1)) * 0.05
        wq, s, b = mx.quantize(w, group_size=group_size, bits=bits)
        s, b = s.astype(dt), b.astype(dt)
        mx.eval(wq, s, b)
        wq_np, s_np, b_np = np.array(wq), np.array(s.astype(mx.float32)), np.array(b.astype(mx.float32))
        for m in ms:
            xs = [mx.random.normal((m, k), key=mx.random.key(10 + i)).astype(dt) for i in range(batch)]
            mx.eval(xs)
            ref = aq.reference(np.array(xs[0].astype(mx.float32)), wq_np, s_np, b_np, group_size, bits)
            ours = np.array(aq.affine_qmm(xs[0], wq, s, b, group_size, bits).astype(mx.float32))
            theirs = np.array(mx.quantized_matmul(xs[0], wq, s, b, transpose=True, group_size=group_size,
                                                  bits=bits).astype(mx.float32))
            norm = np.linalg.norm(ref)
            err_ours = float(np.linalg.norm(ours - ref) / norm)
            err_mlx = float(np.linalg.norm(theirs - ref) / norm)
            t_ours = _median_time(lambda: mx.eval([aq.affine_qmm(x, wq, s, b, group_size, bits) for x in xs]),
                                  trials) / batch
            t_mlx = _median_time(lambda: mx.eval([mx.quantized_matmul(x, wq, s, b, transpose=True,
                                                                      group_size=group_size, bits=bits)
                                                  for x in xs]), trials) / batch
            rows.append({"op": name, "N": n, "K": k, "M": m, "bits": bits, "group_size": group_size,
                         "dtype": dtype_name, "ours_us": t_ours * 1e6, "mlx_us": t_mlx * 1e6,
                         "speedup": t_mlx / t_ours, "rel_err_ours": err_ours, "rel_err_mlx": err_mlx})
            r = rows[-1]
            print(f"qmm {name:14s} N={n:5d} K={k:4d} M={m:2d} b{bits} g{group_size}: ours {r['ours_us']:8.1f} us"
                  f"  mlx {r['mlx_us']:8.1f} us  x{r['speedup']:.2f}  err {err_ours:.1e}/{err_mlx:.1e}",
                  flush=True)
    return rows


def bench_topk(n, d, k, trials, rpws):
    import mlx.core as mx

    from mlx_synapse.kernels import int8_search as cpu
    from mlx_synapse.kernels.gpu import int8_topk as tk

    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (n, d)).astype(np.int8)
    inv = cpu.inv_norms(codes)
    ids = np.arange(n, dtype=np.int64)
    queries = [rng.standard_normal((1, d)).astype(np.float32) for _ in range(8)]
    queries = [q / np.linalg.norm(q) for q in queries]
    words = mx.array(codes.view(np.uint32))
    inv_mx = mx.array(inv)
    mx.eval(words, inv_mx)
    rs, ri = tk.reference(codes, inv, queries[0], k)
    mirror = cpu.AffineInt8Mirror(d)
    mirror.sync(codes, inv, n)
    out = {"N": n, "D": d, "k": k}

    def p(ts, q):
        return float(np.percentile(np.asarray(ts) * 1e3, q))

    for rpw in rpws:
        s, i = tk.int8_topk(words, inv_mx, mx.array(queries[0]), k, rpw=rpw)
        ok = bool(np.array_equal(i, ri)) and float(np.abs(s - rs).max()) < 1e-5
        ts = []
        for t in range(trials + 3):
            q = mx.array(queries[t % len(queries)])
            t0 = time.perf_counter()
            tk.int8_topk(words, inv_mx, q, k, rpw=rpw)
            ts.append(time.perf_counter() - t0)
        ts = ts[3:]
        # the kernel alone: 20 searches in one evaluation, no readback or merge
        groups, (grid, tg) = tk._launch(n, 1, rpw)
        from mlx_synapse.kernels.gpu.affine_qmm import _params

        kern = tk.KERNEL.mlx("cuda" if not mx.metal.is_available() else "metal")
        qs = [mx.array(q) for q in queries]
        mx.eval(qs)

        def kernel_only():
            mx.eval([kern(inputs=[words, inv_mx, qs[j % len(qs)], _params(n, d, k, rpw)], grid=grid,
                          threadgroup=tg, output_shapes=[(1, groups * k)] * 2,
                          output_dtypes=[mx.float32, mx.uint32])[0] for j in range(20)])

        t_kernel = _median_time(kernel_only, 20) / 20
        out[f"ours_rpw{rpw}"] = {"p50_ms": p(ts, 50), "p90_ms": p(ts, 90), "matches_reference": ok,
                                 "max_abs_err": float(np.abs(s - rs).max()), "kernel_only_ms": t_kernel * 1e3,
                                 "candidates": groups * k}
        print(f"topk ours rpw={rpw:3d}: p50 {p(ts, 50):.3f} ms p90 {p(ts, 90):.3f} ms  ids==ref {ok}"
              f"  kernel alone {t_kernel * 1e3:.3f} ms ({groups * k} candidates)", flush=True)
    mi, ms = mirror.topk(queries[0], ids, k)  # (ids, scores)
    ok = bool(np.array_equal(np.asarray(mi).reshape(-1)[:k], ri[0]))
    ts = []
    for t in range(trials + 3):
        q = queries[t % len(queries)]
        t0 = time.perf_counter()
        mirror.topk(q, ids, k)
        ts.append(time.perf_counter() - t0)
    ts = ts[3:]
    out["mlx_quantized_matmul"] = {"p50_ms": p(ts, 50), "p90_ms": p(ts, 90), "matches_reference": ok}
    print(f"topk quantized_matmul path: p50 {p(ts, 50):.3f} ms p90 {p(ts, 90):.3f} ms  ids==ref {ok}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", default="1,2,4,8,16")
    ap.add_argument("--bits", default="4")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--topk-n", type=int, default=100_000)
    ap.add_argument("--topk-d", type=int, default=384)
    ap.add_argument("--topk-k", type=int, default=10)
    ap.add_argument("--topk-trials", type=int, default=100)
    ap.add_argument("--rpw", default="16,32,64,128")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: qmm, topk")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        import mlx.core as mx

        from mlx_synapse.kernels.gpu import dialect
    except ImportError as e:
        print(f"gpu_kernels: {e}; install MLX with a GPU backend (pip install 'mlx[cuda13]')", file=sys.stderr)
        return 2
    backend = dialect.gpu_backend()
    if backend is None:
        print("gpu_kernels: MLX's default device is not a GPU; run on a Metal or CUDA machine", file=sys.stderr)
        return 2
    result = {"backend": backend, "mlx": mx.__version__, "host": platform.node(), "qmm": [], "topk": None}
    try:
        import subprocess

        result["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                       capture_output=True, text=True).stdout.strip()
    except OSError:
        result["gpu"] = backend
    skip = set(filter(None, args.skip.split(",")))
    if "qmm" not in skip:
        for bits in map(int, args.bits.split(",")):
            result["qmm"] += bench_qmm([int(m) for m in args.ms.split(",")], bits, args.group_size,
                                       args.batch, args.trials, args.dtype)
    if "topk" not in skip:
        result["topk"] = bench_topk(args.topk_n, args.topk_d, args.topk_k, args.topk_trials,
                                    [int(r) for r in args.rpw.split(",")])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
