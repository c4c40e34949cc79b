"""``--backend auto``: the backend that decodes fastest on this machine, measured once.

Both candidates run the same stand-in for a decode step -- the four matrix
products of a SmolLM2-135M layer (q|k|v, o, gate|up, down at 4 bits, group 32)
repeated for 30 layers -- the way each would run it for real:

* ``numpy``: the compiled engine's kernels (``kernels/native.py``) on its
  threads, or NumPy/BLAS float32 products where the engine cannot be built;
* ``mlx``: ``mx.quantized_matmul`` on a GPU (Metal/CUDA); on MLX's CPU backend
  bfloat16 products, which is what the loader runs there.

The faster one (median of a few steps) is written with both timings to
``$MLX_SYNAPSE_CACHE/backend.json`` under a key naming this machine (CPU,
OS, MLX / NumPy versions, MLX device, whether the engine builds), so later
runs just read it.  Overrides: ``--backend mlx|numpy`` or
``MLX_SYNAPSE_BACKEND=mlx|numpy``; ``MLX_SYNAPSE_BACKEND=remeasure`` (or
deleting the file) measures again.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

ENV = "MLX_SYNAPSE_BACKEND"
_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) of q|k|v, o, gate|up, down
_LAYERS = 30
_GROUP = 32

_memo: Dict[str, dict] = {}


def cache_file() -> Path:
    from .defaults import cache_dir

    return cache_dir() / "backend.json"


def machine_key(mlx_device: Optional[str], engine: bool) -> str:
    from .kernels.native import _cpu_signature

    try:
        import mlx.core as mx

        mlx_version = mx.__version__
    except ImportError:
        mlx_version = "none"
    cpu = _cpu_signature().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in cpu if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    return " | ".join(
        [platform.system(), platform.machine(), model, f"{os.cpu_count()} cpus", f"mlx {mlx_version}",
         f"mlx device {mlx_device}", f"numpy {np.__version__}", f"engine {'yes' if engine else 'no'}"]
    )


def _weights(rng):
    from .kernels import affine

    out = []
    for n, k in _SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
        out.append((w, *affine.quantize_numpy(w, _GROUP, 4)))
    return out


def _time(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up: compiles, allocates, pages in
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_numpy(steps: int = 5) -> float:
    """Seconds per stand-in decode step on the NumPy backend's decode path."""
    from .kernels import native

    rng = np.random.default_rng(0)
    mats = _weights(rng)
    lib = native.library()
    if lib is not None:
        from .backends.numpy.engine import default_threads

        ctx = lib.syn_new(1, 576, 9, 3, 64, 1536, 49152, 1e-5, default_threads(), 20000)
        try:
            qm = [native.QMat.from_mlx(wq, s, b, _GROUP, 4) for _, wq, s, b in mats]
            xs = [rng.standard_normal(m.K).astype(np.float32) for m in qm]
            ys = [np.empty(m.N, np.float32) for m in qm]
            # one call per matrix, as the engine runs them inside a token
            calls = [(m.kind, m.N, m.K, m.group, *m.pointers()[2:], x.ctypes.data, y.ctypes.data)
                     for m, x, y in zip(qm, xs, ys)]

            def step():
                for _ in range(_LAYERS):
                    for c in calls:
                        lib.syn_matvec(ctx, *c)

            return _time(step, steps)
        finally:
            lib.syn_free(ctx)
    ws = [np.ascontiguousarray(w.T) for w, *_ in mats]
    xs = [rng.standard_normal((1, w.shape[0])).astype(np.float32) for w in ws]

    def step_blas():
        for _ in range(_LAYERS):
            for x, w in zip(xs, ws):
                x @ w

    return _time(step_blas, steps)


def measure_mlx(steps: int = 5) -> Optional[float]:
    """Seconds per stand-in decode step on MLX (None where MLX cannot be imported)."""
    try:
        import mlx.core as mx
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    mats = _weights(rng)
    on_gpu = mx.default_device() == mx.gpu
    if on_gpu:
        ws = [(mx.array(wq), mx.array(s), mx.array(b)) for _, wq, s, b in mats]
        xs = [mx.array(rng.standard_normal((1, w.shape[1])).astype(np.float32)) for w, *_ in mats]

        def one(x, w):
            return mx.quantized_matmul(x, w[0], w[1], w[2], transpose=True, group_size=_GROUP, bits=4)
    else:
        ws = [mx.array(w).astype(mx.bfloat16) for w, *_ in mats]
        xs = [mx.array(rng.standard_normal((1, w.shape[1])).astype(np.float32)).astype(mx.bfloat16) for w, *_ in mats]

        def one(x, w):
            return x @ w.T

    def step():
        outs = []
        for _ in range(_LAYERS):
            outs += [one(x, w) for x, w in zip(xs, ws)]
        mx.eval(outs)

    return _time(step, steps)


def choose(remeasure: bool = False, log: Optional[Callable[[str], None]] = None) -> dict:
    """``{"backend", "numpy_s", "mlx_s", "key", "file"}``: measured once per machine, then read."""
    from .kernels import native
    from .loader import mlx_available

    device = None
    if mlx_available():
        import mlx.core as mx

        device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    key = machine_key(device, native.library() is not None)
    if not remeasure and key in _memo:
        return _memo[key]
    path = cache_file()
    saved: dict = {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if not isinstance(saved, dict):
        saved = {}
    rec = saved.get(key)
    if remeasure or not isinstance(rec, dict) or rec.get("backend") not in ("mlx", "numpy"):
        if log:
            log("[backend auto] measuring the NumPy and MLX decode paths once for this machine ...")
        t_np = measure_numpy()
        t_mlx = measure_mlx() if device is not None else None
        backend = "mlx" if t_mlx is not None and t_mlx < t_np else "numpy"
        rec = {"backend": backend, "numpy_s": t_np, "mlx_s": t_mlx, "mlx_device": device,
               "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
        saved[key] = rec
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved, indent=1))
            os.replace(tmp, path)
        except OSError as e:  # a read-only cache only costs a re-measure next time
            print(f"[backend auto] could not save {path}: {e}", file=sys.stderr)
    out = dict(rec, key=key, file=str(path))
    _memo[key] = out
    return out
