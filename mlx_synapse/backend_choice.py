"""``--backend auto``: the backend for this machine, decided by what the device is.

* MLX cannot be imported -> ``numpy``;
* MLX runs on a GPU (Metal, CUDA) -> ``mlx`` (packed 4-bit matmuls on the device);
* MLX runs on the CPU and the compiled engine (``kernels/native.py``) builds ->
  ``numpy``: the engine decodes on the checkpoint's own codes ~20x faster than
  MLX's CPU backend on its expanded float32 weights.

No timing is involved there, so a busy machine cannot tip the choice.  Only
where it is a close call -- MLX's CPU backend against NumPy/BLAS float32
products, when the engine cannot be built -- both run the same stand-in for a
decode step (the four matrix products of a SmolLM2-135M layer, q|k|v, o,
gate|up, down, at 4 bits group 32, repeated for 30 layers) the way each would
run it for real, in interleaved rounds, and the lower time wins.  The answer
is written with the timings to ``$MLX_SYNAPSE_CACHE/backend.json`` under a key
naming this machine (CPU, OS, MLX / NumPy versions, MLX device, whether the
engine builds).  A measurement that looks unreliable (rounds that disagree, as
on a busy machine, or a margin under 25%) is taken again by the next few runs,
each keeping the fastest time either backend has shown, since load only ever
slows a run down.  Overrides: ``--backend mlx|numpy`` or
``MLX_SYNAPSE_BACKEND=mlx|numpy``; ``MLX_SYNAPSE_BACKEND=remeasure`` (or
deleting the file) measures the close call again from scratch.
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
    else:  # the loader expands 4-bit weights to float32 on MLX's CPU backend
        ws = [mx.array(w) for w, *_ in mats]
        xs = [mx.array(rng.standard_normal((1, w.shape[1])).astype(np.float32)) for w, *_ in mats]

        def one(x, w):
            return x @ w.T

    def step():
        outs = []
        for _ in range(_LAYERS):
            outs += [one(x, w) for x, w in zip(xs, ws)]
        mx.eval(outs)

    return _time(step, steps)


ROUNDS = 3  # interleaved rounds per measurement
MAX_MEASUREMENTS = 3  # an unreliable measurement is retaken by at most this many runs in all
NOISY = 1.5  # slowest / fastest round of one backend above this: the machine was busy
CLOSE = 1.25  # slower / faster below this: too close to trust one measurement


def mlx_device() -> Optional[str]:
    """``"gpu"`` or ``"cpu"``: where MLX runs here; None where MLX cannot be imported."""
    from .loader import mlx_available

    if not mlx_available():
        return None
    import mlx.core as mx

    return "gpu" if mx.default_device() == mx.gpu else "cpu"


def engine_available() -> bool:
    """Whether the NumPy backend's compiled engine builds and loads here."""
    from .kernels import native

    return native.library() is not None


def by_device(device: Optional[str], engine: bool) -> Optional[tuple]:
    """``(backend, reason)`` where the device alone decides; None for the close call."""
    if device is None:
        return "numpy", "MLX is not installed"
    if device == "gpu":
        return "mlx", "MLX runs on a GPU"
    if engine:
        return "numpy", "MLX runs on the CPU and the compiled engine is available"
    return None


def _measure(log: Optional[Callable[[str], None]]) -> dict:
    """Both stand-ins in ``ROUNDS`` interleaved rounds (both see the same load), min of each."""
    if log:
        log("[backend auto] no compiled engine: timing NumPy/BLAS against MLX's CPU backend ...")
    t_np, t_mlx = [], []
    for _ in range(ROUNDS):
        t_np.append(measure_numpy())
        t_mlx.append(measure_mlx())
    spread = max(max(t) / min(t) for t in (t_np, t_mlx))
    return {"numpy_s": min(t_np), "mlx_s": min(t_mlx), "noisy": spread > NOISY}


def _timed_record(prev: Optional[dict], log) -> dict:
    """Measure again, keeping the fastest time each backend has shown (load only slows)."""
    m = _measure(log)
    n = 1
    if prev is not None and prev.get("decided_by") == "timing":
        n = int(prev.get("measurements", 0)) + 1
        for k in ("numpy_s", "mlx_s"):
            if isinstance(prev.get(k), (int, float)) and prev[k] > 0:
                m[k] = min(m[k], prev[k])
    fast, slow = sorted([m["numpy_s"], m["mlx_s"]])
    return {"backend": "mlx" if m["mlx_s"] < m["numpy_s"] else "numpy", "decided_by": "timing",
            "numpy_s": m["numpy_s"], "mlx_s": m["mlx_s"], "margin": slow / fast, "noisy": m["noisy"],
            "measurements": n, "mlx_device": "cpu", "measured": time.strftime("%Y-%m-%d %H:%M:%S")}


def _looks_wrong(rec: dict) -> bool:
    """A timed choice worth taking again: measured on a busy machine, or too close to call."""
    if rec.get("decided_by") != "timing" or rec.get("backend") not in ("mlx", "numpy"):
        return True  # an old or garbled record
    if int(rec.get("measurements", 0)) >= MAX_MEASUREMENTS:
        return False
    return bool(rec.get("noisy")) or float(rec.get("margin", 0)) < CLOSE


def choose(remeasure: bool = False, log: Optional[Callable[[str], None]] = None) -> dict:
    """``{"backend", "decided_by", "key", "file", ...}`` for this machine.

    The device decides (see the module docstring); only MLX-on-CPU without the
    engine is timed, and that choice is cached and re-checked while it looks wrong.
    """
    device = mlx_device()
    engine = engine_available() if device != "gpu" else False
    key = machine_key(device, engine)
    if not remeasure and key in _memo:
        return _memo[key]
    path = cache_file()
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if not isinstance(saved, dict):
        saved = {}
    rec = saved.get(key) if isinstance(saved.get(key), dict) else None
    rule = by_device(device, engine)
    if rule is not None:
        new = {"backend": rule[0], "decided_by": "device", "reason": rule[1], "mlx_device": device}
        if rec is not None and rec.get("backend") != rule[0] and log:
            log(f"[backend auto] {path} said {rec.get('backend')!r} for this machine; "
                f"using {rule[0]!r}: {rule[1]}.")
    elif remeasure or rec is None or _looks_wrong(rec):
        new = _timed_record(None if remeasure else rec, log)
    else:
        new = rec
    if new != rec:
        saved[key] = new
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two processes may write at once
            tmp.write_text(json.dumps(saved, indent=1))
            os.replace(tmp, path)
        except OSError as e:  # a read-only cache only costs a re-measure next time
            print(f"[backend auto] could not save {path}: {e}", file=sys.stderr)
    out = dict(new, key=key, file=str(path))
    _memo[key] = out
    return out
