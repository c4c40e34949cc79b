"""The shared GPU dialect: one kernel body, instantiated as Metal or as CUDA.

A kernel body is the *body* of a function, written against the calling
convention of ``mx.fast.metal_kernel`` / ``mx.fast.cuda_kernel`` (inputs and
outputs are pointers named by ``input_names`` / ``output_names``; template
arguments are compile-time names).  Everything that differs between the two
languages goes through the names below, defined once per backend by
:data:`METAL_HEADER` / :data:`CUDA_HEADER` and the per-backend preamble that
:func:`instantiate` puts in front of the body:

========================  =====================================================
``gpu_tid``               thread index in the threadgroup / block (1-D groups)
``gpu_lane``              lane in the SIMD group / warp (0..31)
``gpu_warp``              SIMD group / warp index in the threadgroup
``gpu_nwarps``            SIMD groups per threadgroup
``gpu_group_x``, ``_y``   threadgroup / block position in the grid
``gpu_ngroups_x``         threadgroups along x
``GPU_SHARED_ARRAY(T, name, n)``  threadgroup / ``__shared__`` array (declare
                          arrays only: no threadgroup pointers)
``GPU_BARRIER()``         ``threadgroup_barrier(mem_threadgroup)`` / ``__syncthreads()``
``GPU_GLOBAL``            the device address space (``device`` / nothing)
``gpu_simd_sum(x)``, ``gpu_simd_max(x)``, ``gpu_simd_shuffle(x, lane)``,
``gpu_simd_shuffle_down(x, d)``   SIMD-group / warp collectives over 32 lanes
``GPU_FN``                qualifier of helper functions in a kernel's header
========================  =====================================================

Rules a body keeps so that the two instantiations mean the same thing:

* the grid is a whole number of threadgroups (Metal's ``dispatchThreads``
  shrinks edge groups, CUDA does not) -- :func:`launch_dims` checks it;
* threadgroups are 1-D along x and a multiple of 32 threads (SIMD groups and
  warps are both 32 wide on the GPUs this targets);
* every thread of a group reaches every ``GPU_BARRIER()`` and every lane of a
  SIMD group reaches every collective (no divergent collectives).
"""

from __future__ import annotations

SIMD_WIDTH = 32

METAL_HEADER = r"""
#define GPU_GLOBAL device
#define GPU_FN inline
#define GPU_SHARED_ARRAY(T, name, n) threadgroup T name[n]
#define GPU_BARRIER() threadgroup_barrier(mem_flags::mem_threadgroup)
template <typename V> inline V gpu_simd_sum(V x) { return simd_sum(x); }
template <typename V> inline V gpu_simd_max(V x) { return simd_max(x); }
template <typename V> inline V gpu_simd_shuffle(V x, uint l) { return simd_shuffle(x, (ushort)l); }
template <typename V> inline V gpu_simd_shuffle_down(V x, uint d) { return simd_shuffle_down(x, (ushort)d); }
"""

# The body of every Metal kernel starts with this: it names the attributes, so
# mx.fast.metal_kernel (which adds an attribute to the signature only when its
# name occurs in the source) passes exactly these.
METAL_PREAMBLE = r"""
  const uint gpu_tid = thread_index_in_threadgroup;
  const uint gpu_lane = thread_index_in_simdgroup;
  const uint gpu_warp = simdgroup_index_in_threadgroup;
  const uint gpu_nwarps = simdgroups_per_threadgroup;
  const uint gpu_group_x = threadgroup_position_in_grid.x;
  const uint gpu_group_y = threadgroup_position_in_grid.y;
  const uint gpu_ngroups_x = threadgroups_per_grid.x;
"""

CUDA_HEADER = r"""
#define GPU_GLOBAL
#define GPU_FN __device__ __forceinline__
#define GPU_SHARED_ARRAY(T, name, n) __shared__ T name[n]
#define GPU_BARRIER() __syncthreads()
typedef unsigned int uint;
template <typename V> __device__ __forceinline__ V gpu_simd_sum(V x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <typename V> __device__ __forceinline__ V gpu_simd_max(V x) {
  for (int o = 16; o > 0; o >>= 1) { V y = __shfl_xor_sync(0xffffffffu, x, o); x = y > x ? y : x; }
  return x;
}
template <typename V> __device__ __forceinline__ V gpu_simd_shuffle(V x, uint l) {
  return __shfl_sync(0xffffffffu, x, (int)l);
}
template <typename V> __device__ __forceinline__ V gpu_simd_shuffle_down(V x, uint d) {
  return __shfl_down_sync(0xffffffffu, x, d);
}
"""

CUDA_PREAMBLE = r"""
  const uint gpu_tid = threadIdx.x;
  const uint gpu_lane = threadIdx.x & 31u;
  const uint gpu_warp = threadIdx.x >> 5;
  const uint gpu_nwarps = blockDim.x >> 5;
  const uint gpu_group_x = blockIdx.x;
  const uint gpu_group_y = blockIdx.y;
  const uint gpu_ngroups_x = gridDim.x;
"""

BACKENDS = ("metal", "cuda")


def instantiate(backend: str, body: str, header: str = "") -> tuple[str, str]:
    """(header, source) for ``mx.fast.metal_kernel`` or ``mx.fast.cuda_kernel``."""
    if backend == "metal":
        return METAL_HEADER + header, METAL_PREAMBLE + body
    if backend == "cuda":
        return CUDA_HEADER + header, CUDA_PREAMBLE + body
    raise ValueError(f"GPU dialect: backend={backend!r} is not one of {BACKENDS}; pass 'metal' or 'cuda'")


def launch_dims(groups_x: int, groups_y: int, threads: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid in threads, threadgroup) for ``groups_x * groups_y`` whole 1-D groups of ``threads``."""
    if threads <= 0 or threads % SIMD_WIDTH or threads > 1024:
        raise ValueError(
            f"GPU dialect: threadgroup of {threads} threads; use a multiple of {SIMD_WIDTH} up to 1024"
        )
    if groups_x <= 0 or groups_y <= 0:
        raise ValueError(f"GPU dialect: grid of {groups_x} x {groups_y} groups; both must be >= 1")
    return (groups_x * threads, groups_y, 1), (threads, 1, 1)


def gpu_backend() -> str | None:
    """'metal' or 'cuda' when MLX's default device is a GPU of that kind, else None."""
    try:
        import mlx.core as mx
    except ImportError:
        return None
    try:
        if mx.default_device() != mx.gpu:
            return None
        return "metal" if mx.metal.is_available() else "cuda"
    except (AttributeError, RuntimeError):
        return None
