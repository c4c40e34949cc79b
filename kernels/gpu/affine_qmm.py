"""INT4 / INT8 affine group GEMV-GEMM for a few rows (M = 1..16): ``y = x @ W.T``.

``W`` is in MLX's affine layout (``mx.quantize``): uint32 words ``w [N, K*bits/32]``
holding ``32/bits`` codes each, lowest bits first, and per-group ``scales`` /
``biases [N, K/group_size]``; ``W[n, k] = scales[n, k // gs] * q + biases[n, k // gs]``.

Per group the product splits as ``s * (x . q) + b * sum(x)``, so the codes are
never turned into floats times scales.  One SIMD group (warp) owns ``RPS`` output
rows for a tile of ``MT`` rows of ``x``; its 32 lanes walk the row 8 codes at a
time (one word for 4 bits, two for 8 bits: consecutive lanes read consecutive
words), and one ``gpu_simd_sum`` per output finishes the dot products.  A
threadgroup is ``WARPS`` warps; the grid is ``(ceil(N / (WARPS*RPS)), ceil(M / MT))``
groups.  Arithmetic is float32 whatever ``T`` (the dtype of ``x``, the scales and
the output) is.
"""

from __future__ import annotations

import functools

import numpy as np

from . import dialect
from .launch import GpuKernel

SUPPORTED_BITS = (4, 8)
SUPPORTED_GROUPS = (32, 64, 128)
WARPS = 4
RPS = 4  # output rows per SIMD group

BODY = r"""
  const uint M = params[0], N = params[1], K = params[2], gs = params[3];
  const uint row0 = (gpu_group_x * gpu_nwarps + gpu_warp) * RPS;
  const uint m0 = gpu_group_y * MT;
  const uint wpr = K * BITS / 32;  // words per weight row
  const uint gpr = K / gs;         // groups per weight row
  float acc[MT][RPS];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RPS; ++r) acc[m][r] = 0.0f;
  for (uint c = gpu_lane; c < K / 8; c += 32) {  // chunk c: codes 8c .. 8c+7 of each row
    const uint k = c * 8;
    const uint g = k / gs;
    float q[RPS][8];
    float s[RPS], b[RPS];
    for (int r = 0; r < RPS; ++r) {
      const uint row = min(row0 + (uint)r, N - 1);
      s[r] = float(scales[row * gpr + g]);
      b[r] = float(biases[row * gpr + g]);
      if (BITS == 4) {
        const uint wd = w[row * wpr + c];
        for (int j = 0; j < 8; ++j) q[r][j] = float((wd >> (4 * j)) & 15u);
      } else {
        const uint w0 = w[row * wpr + 2 * c];
        const uint w1 = w[row * wpr + 2 * c + 1];
        for (int j = 0; j < 4; ++j) {
          q[r][j] = float((w0 >> (8 * j)) & 255u);
          q[r][j + 4] = float((w1 >> (8 * j)) & 255u);
        }
      }
    }
    for (int m = 0; m < MT; ++m) {
      const uint mm = min(m0 + (uint)m, M - 1);
      float xv[8];
      float xs = 0.0f;
      for (int j = 0; j < 8; ++j) {
        xv[j] = float(x[mm * K + k + j]);
        xs += xv[j];
      }
      for (int r = 0; r < RPS; ++r) {
        float d = 0.0f;
        for (int j = 0; j < 8; ++j) d += xv[j] * q[r][j];
        acc[m][r] += s[r] * d + b[r] * xs;
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RPS; ++r) {
      const float v = gpu_simd_sum(acc[m][r]);
      if (gpu_lane == 0 && m0 + m < M && row0 + r < N) out[(m0 + m) * N + row0 + r] = T(v);
    }
"""

KERNEL = GpuKernel("synapse_affine_qmm", ["w", "scales", "biases", "x", "params"], ["out"], BODY)


def m_tile(m: int) -> int:
    """Rows of ``x`` per tile: the smallest of 1, 2, 4, 8, 16 that holds ``m`` (16 above)."""
    for t in (1, 2, 4, 8):
        if m <= t:
            return t
    return 16


def check(x_shape, w_shape, scales_shape, group_size: int, bits: int) -> tuple[int, int, int]:
    """(M, N, K) of the product, or ValueError naming what does not fit."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"affine_qmm: bits={bits} is not supported; use one of {SUPPORTED_BITS}")
    if group_size not in SUPPORTED_GROUPS:
        raise ValueError(f"affine_qmm: group_size={group_size} is not supported; use one of {SUPPORTED_GROUPS}")
    if len(w_shape) != 2:
        raise ValueError(f"affine_qmm: packed weights must be 2-D [N, K*bits/32], got shape {tuple(w_shape)}")
    n, k = int(w_shape[0]), int(w_shape[1]) * 32 // bits
    if tuple(scales_shape) != (n, k // group_size):
        raise ValueError(
            f"affine_qmm: scales/biases have shape {tuple(scales_shape)}, expected {(n, k // group_size)} "
            f"for {n} rows of {k} inputs in groups of {group_size}"
        )
    if len(x_shape) < 1 or int(x_shape[-1]) != k:
        raise ValueError(f"affine_qmm: x has shape {tuple(x_shape)}, its last axis must be K={k}")
    m = int(np.prod(x_shape[:-1], dtype=np.int64)) if len(x_shape) > 1 else 1
    if m < 1:
        raise ValueError(f"affine_qmm: x has shape {tuple(x_shape)}: no rows")
    return m, n, k


def _launch(m: int, n: int):
    per_group = WARPS * RPS
    mt = m_tile(m)
    grid, tg = dialect.launch_dims(-(-n // per_group), -(-m // mt), WARPS * dialect.SIMD_WIDTH)
    return mt, grid, tg


def reference(x, w, scales, biases, group_size: int, bits: int) -> np.ndarray:
    """``x @ dequantize(W).T`` in float64 NumPy (the reference)."""
    m, n, k = check(np.shape(x), np.shape(w), np.shape(scales), group_size, bits)
    w = np.asarray(w, np.uint32)
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    codes = ((w[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)).reshape(n, k).astype(np.float64)
    s = np.repeat(np.asarray(scales, np.float64), group_size, axis=1)
    b = np.repeat(np.asarray(biases, np.float64), group_size, axis=1)
    wf = codes * s + b
    x2 = np.asarray(x, np.float64).reshape(m, k)
    return (x2 @ wf.T).reshape(*np.shape(x)[:-1], n)


@functools.lru_cache(maxsize=256)
def _params(*values):
    """The kernel's shape arguments as a device array, made once per shape: a fresh host
    array per call costs a host-to-device transfer per product."""
    import mlx.core as mx

    p = mx.array(values, dtype=mx.uint32)
    mx.eval(p)
    return p


def affine_qmm(x, w, scales, biases, group_size: int = 64, bits: int = 4, backend: str | None = None):
    """``x @ W.T`` on the GPU through the kernel (MLX arrays in and out)."""
    import mlx.core as mx

    backend = backend or dialect.gpu_backend()
    if backend is None:
        raise ValueError("affine_qmm: no MLX GPU (Metal or CUDA) is the default device; use mx.quantized_matmul")
    m, n, k = check(x.shape, w.shape, scales.shape, group_size, bits)
    mt, grid, tg = _launch(m, n)
    params = _params(m, n, k, group_size)
    dt = x.dtype
    if scales.dtype != dt:
        scales, biases = scales.astype(dt), biases.astype(dt)
    (out,) = KERNEL.mlx(backend)(
        inputs=[w, scales, biases, x.reshape(m, k), params],
        template=[("T", dt), ("BITS", bits), ("MT", mt), ("RPS", RPS)],
        grid=grid, threadgroup=tg, output_shapes=[(m, n)], output_dtypes=[dt],
    )
    return out.reshape(*x.shape[:-1], n)


def affine_qmm_emulated(x, w, scales, biases, group_size: int = 64, bits: int = 4, policy="random", seed=0):
    """The Metal instantiation under the CPU emulator (NumPy in and out; float32 or float16)."""
    x = np.asarray(x)
    m, n, k = check(x.shape, np.shape(w), np.shape(scales), group_size, bits)
    mt, grid, tg = _launch(m, n)
    params = np.asarray([m, n, k, group_size], np.uint32)
    dt = x.dtype
    (out,) = KERNEL.emulator()(
        [np.asarray(w, np.uint32), np.asarray(scales, dt), np.asarray(biases, dt), x.reshape(m, k), params],
        [(m, n)], [dt], grid, tg, template=[("T", dt), ("BITS", bits), ("MT", mt), ("RPS", RPS)],
        policy=policy, seed=seed,
    )
    return out.reshape(*x.shape[:-1], n)
