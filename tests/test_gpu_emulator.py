"""The Metal emulator itself: the source it builds, the schedules it runs, and that it
catches a missing barrier, a divergent barrier and a divergent SIMD collective."""

import shutil

import numpy as np
import pytest

from mlx_synapse.kernels.gpu import dialect
from mlx_synapse.kernels.gpu.emulator import MetalEmulatorKernel

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the Metal emulator needs g++")

# Each thread writes its element to threadgroup memory and reads its neighbour's.
SHIFT = """
  GPU_SHARED_ARRAY(float, buf, 256);
  const uint i = gpu_group_x * 64 + gpu_tid;
  buf[gpu_tid] = x[i];
  {barrier}
  out[i] = buf[(gpu_tid + {step}) % 64];
"""


def _shift_kernel(barrier: bool, step: int):
    header, source = dialect.instantiate("metal", SHIFT.format(barrier="GPU_BARRIER();" if barrier else "",
                                                               step=step))
    return MetalEmulatorKernel(f"shift_{int(barrier)}_{step}", ["x"], ["out"], source, header)


def _shift_expected(x, step):
    return x.reshape(-1, 64)[:, (np.arange(64) + step) % 64].ravel()


def test_missing_barrier_is_caught_and_the_barrier_fixes_it():
    x = np.random.default_rng(0).standard_normal(192).astype(np.float32)
    # step 1: the forward order reads a neighbour before it wrote; step 63: the reverse order does
    for step, policy in ((1, "forward"), (63, "reverse"), (1, "random"), (63, "random")):
        (racy,) = _shift_kernel(False, step)([x], [x.shape], [np.float32], (192, 1, 1), (64, 1, 1),
                                             policy=policy, seed=3)
        assert not np.array_equal(racy, _shift_expected(x, step)), (step, policy)
        (ok,) = _shift_kernel(True, step)([x], [x.shape], [np.float32], (192, 1, 1), (64, 1, 1),
                                          policy=policy, seed=3)
        np.testing.assert_array_equal(ok, _shift_expected(x, step))


def test_divergent_barrier_is_reported_not_hung():
    header, source = dialect.instantiate("metal", """
      if (gpu_tid < 40) { GPU_BARRIER(); }
      out[gpu_tid] = 1.0f;
    """)
    k = MetalEmulatorKernel("divergent_barrier", ["x"], ["out"], source, header)
    with pytest.raises(RuntimeError, match="not reached by every thread"):
        k([np.zeros(64, np.float32)], [(64,)], [np.float32], (64, 1, 1), (64, 1, 1))


def test_divergent_simd_collective_is_reported():
    header, source = dialect.instantiate("metal", """
      float v = 1.0f;
      if (gpu_lane < 16) v = gpu_simd_sum(v);
      out[gpu_tid] = v;
    """)
    k = MetalEmulatorKernel("divergent_simd", ["x"], ["out"], source, header)
    with pytest.raises(RuntimeError, match="divergent collective"):
        k([np.zeros(32, np.float32)], [(32,)], [np.float32], (32, 1, 1), (32, 1, 1))


def test_simd_collectives_over_32_lanes():
    header, source = dialect.instantiate("metal", """
      const uint i = gpu_group_x * 64 + gpu_tid;
      const float v = x[i];
      out[4 * i + 0] = gpu_simd_sum(v);
      out[4 * i + 1] = gpu_simd_max(v);
      out[4 * i + 2] = gpu_simd_shuffle(v, 31u - gpu_lane);
      out[4 * i + 3] = gpu_simd_shuffle_down(v, 3u);
    """)
    k = MetalEmulatorKernel("collectives", ["x"], ["out"], source, header)
    x = np.random.default_rng(1).permutation(128).astype(np.float32)
    (out,) = k([x], [(128 * 4,)], [np.float32], (128, 1, 1), (64, 1, 1))
    out = out.reshape(4, 32, 4)  # (simdgroup, lane, op)
    lanes = x.reshape(4, 32)
    np.testing.assert_array_equal(out[:, :, 0], np.repeat(lanes.sum(1, keepdims=True), 32, 1))
    np.testing.assert_array_equal(out[:, :, 1], np.repeat(lanes.max(1, keepdims=True), 32, 1))
    np.testing.assert_array_equal(out[:, :, 2], lanes[:, ::-1])
    down = np.concatenate([lanes[:, 3:], lanes[:, 29:]], axis=1)  # lanes past the end keep their own
    np.testing.assert_array_equal(out[:, :, 3], down)


def test_source_is_built_as_mlx_builds_it():
    header, source = dialect.instantiate("metal", "out[gpu_tid] = T(x[gpu_tid] * x_shape[0]);")
    k = MetalEmulatorKernel("sig", ["x"], ["out"], source, header)
    src, call = k.build_source([np.zeros(8, np.float16)], [np.float32], template=[("T", np.float32), ("B", 4)])
    assert "template <typename T, int B>\n[[kernel]] void custom_kernel_sig(" in src
    assert "  const device float16_t* x [[buffer(0)]],\n  const constant int* x_shape [[buffer(1)]],\n" \
           "  device float* out [[buffer(2)]]," in src
    # attributes only where the body names them, in mx.fast.metal_kernel's order
    assert "  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]]" in src
    assert "threads_per_grid [[" not in src
    assert 'template [[host_name("custom_kernel_sig_float_4")]] [[kernel]] decltype(custom_kernel_sig<float, 4>)' in src
    assert call == "custom_kernel_sig<float, 4>"


def test_unwritten_output_stays_poisoned():
    header, source = dialect.instantiate("metal", "if (gpu_tid % 2 == 0) out[gpu_group_x * 32 + gpu_tid] = 1.0f;")
    k = MetalEmulatorKernel("half_written", ["x"], ["out"], source, header)
    (out,) = k([np.zeros(1, np.float32)], [(64,)], [np.float32], (64, 1, 1), (32, 1, 1))
    assert np.isnan(out[1::2]).all() and (out[0::2] == 1).all()


def test_bad_launch_is_a_clear_error():
    header, source = dialect.instantiate("metal", "out[0] = 1.0f;")
    k = MetalEmulatorKernel("bad_launch", ["x"], ["out"], source, header)
    with pytest.raises(ValueError, match="whole number"):
        k([np.zeros(1, np.float32)], [(1,)], [np.float32], (48, 1, 1), (32, 1, 1))
    with pytest.raises(ValueError, match="multiple of 32"):
        dialect.launch_dims(1, 1, 48)
    with pytest.raises(ValueError, match="backend='vulkan'"):
        dialect.instantiate("vulkan", "")


def test_stale_threadgroup_memory_reads_as_poison():
    # thread 0 reads slot 1 before anyone wrote it in this group; an earlier group (or call) did
    header, source = dialect.instantiate("metal", """
      GPU_SHARED_ARRAY(float, buf, 32);
      const float seen = buf[(gpu_tid + 1) % 32];
      GPU_BARRIER();
      buf[gpu_tid] = 5.0f;
      out[gpu_group_x * 32 + gpu_tid] = seen;
    """)
    k = MetalEmulatorKernel("stale_read", ["x"], ["out"], source, header)
    for _ in range(2):
        (out,) = k([np.zeros(1, np.float32)], [(64,)], [np.float32], (64, 1, 1), (32, 1, 1))
        assert np.isnan(out).all()


def test_real_kernel_without_its_barrier_fails_under_the_emulator():
    from mlx_synapse.kernels.gpu import int8_topk as tk
    from mlx_synapse.kernels.gpu.launch import GpuKernel

    racy_body = tk.BODY.replace("qs[d] = queries[qi * D + d];\n  GPU_BARRIER();", "qs[d] = queries[qi * D + d];", 1)
    assert racy_body != tk.BODY
    racy = GpuKernel("topk_no_barrier", tk.KERNEL.input_names, tk.KERNEL.output_names, racy_body, tk.KERNEL.header)
    rng = np.random.default_rng(5)
    codes = rng.integers(-128, 128, (40, 64)).astype(np.int8)
    inv = (1 / np.linalg.norm(codes.astype(np.float64), axis=1)).astype(np.float32)
    q = rng.standard_normal((1, 64)).astype(np.float32)
    params = np.asarray([40, 64, 4, 1], np.uint32)
    groups, (grid, tg) = tk._launch(40, 1, 1)
    args = ([codes.view(np.uint32), inv, q, params], [(1, groups * 4)] * 2, [np.float32, np.uint32], grid, tg)
    for policy in ("forward", "random"):
        good_s, good_i = tk.KERNEL.emulator()(*args, policy=policy, seed=2)
        bad_s, bad_i = racy.emulator()(*args, policy=policy, seed=2)
        s, i = tk.merge(good_s, good_i, 4)
        rs, ri = tk.reference(codes, inv, q, 4)
        assert np.array_equal(i, ri) and np.abs(s - rs).max() < 1e-5
        # unwritten query slots read as NaN: rows score NaN and never enter the lists
        assert not np.array_equal(bad_i, good_i), policy
