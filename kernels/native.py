"""The compiled CPU decode engine (``csrc/synapse_cpu.c``): build, load, pack weights.

The C source ships with the package and is compiled on first use with the
system compiler for the machine it runs on (``-O3 -march=native``: AVX-512 /
AVX2 on x86, NEON on ARM, plain C elsewhere), into the cache
(``$MLX_SYNAPSE_CACHE/kernels/<hash>/``, keyed by the source, compiler, flags
and CPU).  A machine without a working compiler, or ``MLX_SYNAPSE_NATIVE=0``,
gets ``None`` from :func:`library` and the NumPy backend stays on its BLAS path.

Why C and not numba (the JIT the memory bank's kernels use): numba widens
int8/int16 products to int64, so a block's integer dot product cannot use
``vpmaddwd`` / NEON ``vmlal``; the best numba 4-bit matvec measured here ran at
~9.5 G weights/s on one thread, under what a decode faster than llama.cpp needs.

Packing (done once at load, :func:`pack_q4` / :func:`pack_q8`):

* 4-bit: per block of 32 inputs, 16 bytes; byte ``j`` holds code ``j`` in its
  low nibble and code ``j + 16`` in its high nibble (one 16-byte load unpacks
  into the block's 32 codes in order with an AND and a shift);
* 8-bit: MLX's own bytes (element ``i`` of a row is byte ``i``);
* scales and biases float32 ``[N, K / group]``; ``group`` a power-of-two
  multiple of 32.

Prefill's GEMM reads a second form, :class:`TileMat` (``syn_pack_tiles``): rows
in tiles of 16, each (tile, block of 32 inputs) its codes interleaved so one
64-byte load holds 4 inputs of 16 rows, then the 16 rows' scales and biases.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

KIND_F32, KIND_Q4, KIND_Q8 = 0, 1, 2
BLOCK = 32
PLANE_QMAX = np.float32(32639)  # the prefill GEMM's activation scale: max|v| / PLANE_QMAX
ABI_VERSION = 3
SOURCE = Path(__file__).with_name("csrc") / "synapse_cpu.c"

_lock = threading.Lock()
_libs: dict = {}
_errors: dict = {}


def _cache_root() -> Path:
    root = os.environ.get("MLX_SYNAPSE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mlx_synapse"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part"):
                    parts.append(line.strip())
                    if key in ("flags", "Features"):
                        break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _compiler() -> Optional[str]:
    cc = os.environ.get("MLX_SYNAPSE_CC") or os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _flag_sets(generic: bool) -> List[List[str]]:
    # -fno-trapping-math / -fno-math-errno: lets branches on floats become vector blends;
    # no result changes (only floating-point exception flags and errno are given up).
    base = ["-O3", "-fPIC", "-pthread", "-std=c11", "-fno-trapping-math", "-fno-math-errno"]
    simd = ["-fopenmp-simd"]  # vectorises the `omp simd` reductions; no OpenMP runtime
    if generic:
        return [base + simd + ["-DSYNAPSE_GENERIC"], base + ["-DSYNAPSE_GENERIC"]]
    return [base + simd + ["-march=native"], base + ["-march=native"], base + simd + ["-mcpu=native"], base]


def _compile(cc: str, flags: List[str], out: Path) -> Tuple[bool, str]:
    link = ["-dynamiclib"] if sys.platform == "darwin" else ["-shared"]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cc, *flags, *link, "-o", tmp, str(SOURCE), "-lm"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.unlink(tmp)
        return False, f"{' '.join(cmd)}: {e}"
    if r.returncode != 0:
        os.unlink(tmp)
        return False, f"{' '.join(cmd)}:\n{r.stderr.strip()[-2000:]}"
    os.replace(tmp, out)  # atomic: a concurrent builder sees the old file or the new one
    return True, ""


def _declare(lib: ctypes.CDLL) -> None:
    vp, fp, ip, i, f = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    sig = {
        "syn_abi_version": ([], i),
        "syn_simd": ([], ctypes.c_char_p),
        "syn_new": ([i, i, i, i, i, i, i, f, i, i], vp),
        "syn_free": ([vp], None),
        "syn_threads": ([vp], i),
        "syn_set_layer": ([vp, i, ip, ip, vp, vp, vp, vp], None),
        "syn_set_head": ([vp, i, i, vp, fp, fp, fp, fp, ip], None),
        "syn_set_cache": ([vp, i, fp, fp, i], i),
        "syn_set_lora": ([vp, i, i, i, fp, fp], i),
        "syn_decode": ([vp, i, i, i, fp, fp, fp], i),
        "syn_decode_batch": ([vp, i, ip, ip, ip, fp, fp, vp, ip, fp], i),
        "syn_matvec": ([vp, i, i, i, i, vp, fp, fp, fp, fp], i),
        "syn_quantize_act": ([fp, i, ip, fp, fp], None),
        "syn_read_words": ([vp, vp, ctypes.c_size_t], ctypes.c_uint64),
        "syn_softmax_causal": ([vp, fp, i, i, i, i], None),
        "syn_silu_mul": ([vp, fp, i, i, fp], None),
        "syn_rope": ([vp, fp, i, i, i, fp, fp], None),
        "syn_tile_bytes": ([i], i),
        "syn_pack_tiles": ([i, i, i, i, vp, fp, fp, vp], i),
        "syn_gemm_fast": ([], i),
        "syn_gemm": ([vp, i, i, i, vp, fp, i, i, fp, i, i, fp, fp], i),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def build_error(generic: bool = False) -> Optional[str]:
    """Why :func:`library` returned None (None if it did not, or was not asked)."""
    return _errors.get(generic)


def library(generic: bool = False) -> Optional[ctypes.CDLL]:
    """The engine library, compiled on first use; None where it cannot be built.

    ``generic=True`` builds the plain-C kernels (no SIMD), the reference the
    tests hold the SIMD build to.
    """
    if os.environ.get("MLX_SYNAPSE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    with _lock:
        if generic in _libs:
            return _libs[generic]
        lib = None
        cc = _compiler()
        if cc is None:
            _errors[generic] = "no C compiler found (set MLX_SYNAPSE_CC or CC, or install cc)"
        else:
            source = SOURCE.read_bytes()
            try:
                version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.TimeoutExpired):
                version = ""
            errors = []
            for flags in _flag_sets(generic):
                key = hashlib.sha256(
                    b"\0".join([source, cc.encode(), version.encode(), " ".join(flags).encode(),
                                _cpu_signature().encode()])
                ).hexdigest()[:16]
                out = _cache_root() / "kernels" / key / ("libsynapse_cpu" + (".dylib" if sys.platform == "darwin" else ".so"))
                ok = out.exists()
                if not ok:
                    ok, err = _compile(cc, flags, out)
                    if not ok:
                        errors.append(err)
                        continue
                try:
                    cand = ctypes.CDLL(str(out))
                    _declare(cand)
                    if cand.syn_abi_version() != ABI_VERSION:
                        raise OSError(f"ABI {cand.syn_abi_version()} != {ABI_VERSION}")
                except (OSError, AttributeError) as e:
                    errors.append(f"{out}: {e}")
                    continue
                lib = cand
                break
            if lib is None:
                _errors[generic] = "the CPU engine did not build:\n" + "\n".join(errors)
        _libs[generic] = lib
        return lib


# --------------------------------------------------------------------- packing


def _check_group(group: int, K: int) -> None:
    if group < BLOCK or group & (group - 1) or K % group:
        raise ValueError(
            f"[native] group size {group} is not a power-of-two multiple of {BLOCK} dividing {K}; "
            "this matrix stays on the NumPy path"
        )


def pack_q4(w_q: np.ndarray, group: int) -> np.ndarray:
    """MLX 4-bit ``uint32 [N, K/8]`` -> the engine's ``uint8 [N, K/2]`` (see module doc)."""
    w_q = np.ascontiguousarray(w_q)
    N, K = w_q.shape[0], w_q.shape[1] * 8
    _check_group(group, K)
    b = w_q.view(np.uint8).reshape(N, K // BLOCK, 16)  # byte i: codes 2i (low), 2i+1 (high)
    codes = np.empty((N, K // BLOCK, BLOCK), np.uint8)
    codes[..., 0::2] = b & 15
    codes[..., 1::2] = b >> 4
    out = codes[..., :16] | (codes[..., 16:] << 4)
    return np.ascontiguousarray(out).reshape(N, K // 2)


def pack_q8(w_q: np.ndarray, group: int) -> np.ndarray:
    """MLX 8-bit ``uint32 [N, K/4]`` -> ``uint8 [N, K]`` (the same bytes)."""
    w_q = np.ascontiguousarray(w_q)
    N, K = w_q.shape[0], w_q.shape[1] * 4
    _check_group(group, K)
    if sys.byteorder != "little":
        w_q = w_q.byteswap()
    return w_q.view(np.uint8).reshape(N, K)


def unpack_q4(packed: np.ndarray) -> np.ndarray:
    """The engine's 4-bit rows -> codes ``uint8 [N, K]`` (for tests and embeddings)."""
    N, half = packed.shape
    b = packed.reshape(N, half // 16, 16)
    return np.concatenate([b & 15, b >> 4], axis=-1).reshape(N, half * 2)


def _block_codes(x: np.ndarray, qmax: np.float32):
    """The C quantizers' shared step, per block of 32: codes rint(x / d) (int64), d = max|x| / qmax,
    with the same float32 operations (tiny blocks pre-scaled by 2**100 so qmax / max stays finite)."""
    xb = np.asarray(x, np.float32).reshape(-1, BLOCK)
    amax = np.abs(xb).max(axis=1)
    pre = np.where(amax < np.float32(1e-30), np.float32(2.0**100), np.float32(1)).astype(np.float32)
    inv = np.where(amax > 0, qmax / np.where(amax > 0, amax * pre, 1), 0).astype(np.float32)
    c = np.rint((xb * pre[:, None]) * inv[:, None]).astype(np.int64)
    return c, (amax / qmax).astype(np.float32), xb


def quantize_act_reference(x: np.ndarray):
    """NumPy twin of the engine's activation quantizer: int16 codes, block scales, block sums."""
    c, d, xb = _block_codes(x, np.float32(32767))
    return c.astype(np.int16).reshape(-1), d, xb.sum(axis=1, dtype=np.float32)


def quantize_planes_reference(v: np.ndarray):
    """NumPy twin of the prefill GEMM's quantizer (one row v, float32): codes c (int64), block
    scales d, and the two int8 planes hi, lo (c = 256 hi + lo) the kernel multiplies."""
    c, d, _ = _block_codes(v, PLANE_QMAX)
    hi = (c + 128) >> 8
    return c.reshape(-1), d, hi.reshape(-1), (c - 256 * hi).reshape(-1)


def read_bandwidth(threads: int, mbytes: int = 512, repeats: int = 5) -> Optional[float]:
    """Best of ``repeats`` reads of a ``mbytes`` buffer on ``threads`` engine threads, in GB/s
    (what a decode step's weight streaming can reach here); None without the engine."""
    import time

    lib = library()
    if lib is None:
        return None
    buf = np.ones(mbytes * (1 << 20) // 4, np.uint32)
    ctx = lib.syn_new(1, 32, 1, 1, 32, 32, 1, 1e-5, threads, 20000)
    if not ctx:
        return None
    try:
        best = float("inf")
        lib.syn_read_words(ctx, buf.ctypes.data, buf.size)
        for _ in range(repeats):
            t = time.perf_counter()
            if lib.syn_read_words(ctx, buf.ctypes.data, buf.size) != buf.size:
                raise RuntimeError("[native] read probe summed wrongly")
            best = min(best, time.perf_counter() - t)
        return buf.nbytes / best / 1e9
    finally:
        lib.syn_free(ctx)


class QMat:
    """One matrix in an engine kind: float32 rows, or packed codes + scales + biases."""

    __slots__ = ("kind", "N", "K", "group", "w", "s", "b")

    def __init__(self, kind: int, w: np.ndarray, s=None, b=None, group: int = 0, K: int = 0):
        self.kind = kind
        self.w = np.ascontiguousarray(w)
        self.N = self.w.shape[0]
        if kind == KIND_F32:
            if self.w.dtype != np.float32:
                raise ValueError(f"[native] float rows must be float32, got {self.w.dtype}")
            self.K, self.group, self.s, self.b = self.w.shape[1], 0, None, None
            return
        self.K = K
        self.group = group
        _check_group(group, K)
        self.s = np.ascontiguousarray(s, dtype=np.float32)
        self.b = np.ascontiguousarray(b, dtype=np.float32)
        want = (self.N, K // group)
        if self.s.shape != want or self.b.shape != want:
            raise ValueError(f"[native] scales/biases {self.s.shape}/{self.b.shape}, expected {want}")

    @classmethod
    def from_mlx(cls, w_q: np.ndarray, scales, biases, group: int, bits: int) -> "QMat":
        K = w_q.shape[1] * 32 // bits
        if bits == 4:
            return cls(KIND_Q4, pack_q4(w_q, group), scales, biases, group, K)
        if bits == 8:
            return cls(KIND_Q8, pack_q8(w_q, group), scales, biases, group, K)
        raise ValueError(f"[native] {bits}-bit weights have no engine kernel (4 and 8 do)")

    def scale_rows(self, rows: slice, factor: float) -> None:
        """Multiply rows' outputs by ``factor`` (folds the attention scale into q)."""
        if self.kind == KIND_F32:
            self.w[rows] *= np.float32(factor)
        else:
            self.s[rows] *= np.float32(factor)
            self.b[rows] *= np.float32(factor)

    @staticmethod
    def concat(mats: List["QMat"]) -> "QMat":
        k = {(m.kind, m.K, m.group) for m in mats}
        if len(k) != 1:
            raise ValueError("[native] cannot fuse matrices of different kinds, widths or groups")
        m0 = mats[0]
        w = np.concatenate([m.w for m in mats])
        if m0.kind == KIND_F32:
            return QMat(KIND_F32, w)
        return QMat(m0.kind, w, np.concatenate([m.s for m in mats]), np.concatenate([m.b for m in mats]),
                    m0.group, m0.K)

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + (0 if self.s is None else self.s.nbytes + self.b.nbytes)

    def pointers(self):
        ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
        return self.kind, self.group, ptr(self.w), ptr(self.s), ptr(self.b)

    def dequantize(self) -> np.ndarray:
        """float32 [N, K] (the reference the kernels are tested against)."""
        if self.kind == KIND_F32:
            return self.w.astype(np.float32)
        codes = unpack_q4(self.w) if self.kind == KIND_Q4 else self.w
        rep = self.group
        return (codes.astype(np.float32) * np.repeat(self.s, rep, axis=1) + np.repeat(self.b, rep, axis=1))


class TileMat:
    """A 4/8-bit matrix repacked into the prefill GEMM's tiles of 16 rows (see ``syn_pack_tiles``)."""

    __slots__ = ("kind", "N", "K", "data")

    def __init__(self, m: QMat, lib=None):
        if m.kind not in (KIND_Q4, KIND_Q8):
            raise ValueError("[native] only 4/8-bit matrices have a tiled form")
        lib = lib or library()
        if lib is None:
            raise RuntimeError(build_error() or "the CPU engine is disabled (MLX_SYNAPSE_NATIVE=0)")
        self.kind, self.N, self.K = m.kind, m.N, m.K
        tiles = -(-m.N // 16)
        self.data = np.empty(tiles * (m.K // BLOCK) * lib.syn_tile_bytes(m.kind), np.uint8)
        k, g, pw, ps, pb = m.pointers()
        if lib.syn_pack_tiles(k, m.N, m.K, g, pw, ps, pb, self.data.ctypes.data) != 0:
            raise ValueError(f"[native] could not tile a {m.N}x{m.K} matrix")

    @property
    def nbytes(self) -> int:
        return self.data.nbytes
