"""Run a kernel's Metal instantiation on Linux: the source is built exactly as
``mx.fast.metal_kernel`` builds it (header, template line, ``[[kernel]]``
signature with ``[[buffer(i)]]`` inputs, ``_shape``/``_strides``/``_ndim``
arguments and thread attributes added when their names occur in the body,
then the explicit instantiation), compiled as C++20 against ``metal_shim.h``
and called through ctypes over NumPy arrays.

A threadgroup runs as real threads meeting at barriers, one at a time in the
order of a scheduling ``policy`` ("random" with a seed, "forward", "reverse");
SIMD-group collectives are exchanged over the 32 lanes.  See metal_shim.h for
why a missing barrier shows up as a wrong result under some policy.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

_SHIM_DIR = Path(__file__).resolve().parent
POLICIES = {"random": 0, "forward": 1, "reverse": 2}

# mx.fast.metal_kernel's attribute table (name, type), in its order.
METAL_ATTRIBUTES = (
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"),
    ("grid_origin", "uint3"),
    ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"),
    ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"),
    ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"),
    ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"),
    ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"),
    ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"),
    ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)

# Value of each supported attribute for thread t of the current group (C++).
_ATTR_VALUE = {
    "simdgroup_index_in_threadgroup": "(uint)(t / 32)",
    "simdgroups_per_threadgroup": "(uint)((g.n + 31) / 32)",
    "thread_execution_width": "32u",
    "threads_per_simdgroup": "32u",
    "thread_index_in_simdgroup": "(uint)(t % 32)",
    "thread_index_in_threadgroup": "(uint)t",
    "thread_position_in_grid": "uint3{g.group_pos.x * (uint)g.n + (uint)t, g.group_pos.y, g.group_pos.z}",
    "thread_position_in_threadgroup": "uint3{(uint)t, 0u, 0u}",
    "threadgroup_position_in_grid": "g.group_pos",
    "threadgroups_per_grid": "g.groups",
    "threads_per_grid": "uint3{g.groups.x * (uint)g.n, g.groups.y, g.groups.z}",
    "threads_per_threadgroup": "g.tg_size",
}

# MLX's get_type_string for the dtypes the emulator carries.
_METAL_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float16): "float16_t",
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int16): "int16_t",
    np.dtype(np.uint16): "uint16_t",
    np.dtype(np.int32): "int32_t",
    np.dtype(np.uint32): "uint32_t",
    np.dtype(np.int64): "int64_t",
    np.dtype(np.uint64): "uint64_t",
}

_BUILD_LOCK = threading.Lock()
_LIBS: dict[str, ctypes.CDLL] = {}


def _type_string(dtype) -> str:
    dt = np.dtype(dtype)
    if dt not in _METAL_TYPES:
        raise ValueError(f"Metal emulator: dtype {dt} is not supported; use one of {sorted(map(str, _METAL_TYPES))}")
    return _METAL_TYPES[dt]


def _template_value(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return _type_string(v)


def _cache_dir() -> Path:
    root = os.environ.get("MLX_SYNAPSE_CACHE") or str(Path.home() / ".cache" / "mlx_synapse")
    d = Path(root) / "gpu_emulator"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _compile(cpp: str) -> ctypes.CDLL:
    key = hashlib.sha256((cpp + (_SHIM_DIR / "metal_shim.h").read_text()).encode()).hexdigest()[:24]
    with _BUILD_LOCK:
        if key in _LIBS:
            return _LIBS[key]
        so = _cache_dir() / f"k_{key}.so"
        if not so.exists():
            cxx = os.environ.get("CXX", "g++")
            if shutil.which(cxx) is None:
                raise FileNotFoundError(
                    f"Metal emulator: C++ compiler {cxx!r} not found; install g++ (12+) or set CXX"
                )
            src = so.with_suffix(".cpp")
            src.write_text(cpp)
            tmp = so.with_suffix(f".{os.getpid()}.tmp.so")
            cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", f"-I{_SHIM_DIR}",
                   str(src), "-o", str(tmp)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                first = "\n".join(res.stderr.splitlines()[:20])
                raise RuntimeError(f"Metal emulator: the kernel did not compile as C++ ({src}):\n{first}")
            os.replace(tmp, so)
        lib = ctypes.CDLL(str(so))
        lib.emu_run.restype = ctypes.c_int
        lib.emu_run.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_int,
            ctypes.c_int, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_longlong),
        ]
        _LIBS[key] = lib
        return lib


class MetalEmulatorKernel:
    """Same construction and call as ``mx.fast.metal_kernel``, over NumPy arrays, on the CPU."""

    def __init__(self, name: str, input_names, output_names, source: str, header: str = ""):
        if not output_names:
            raise ValueError("Metal emulator: must specify at least one output")
        self.name = name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.source = source
        self.header = header
        self.shape_infos = [
            (f"{n}_shape" in source, f"{n}_strides" in source, f"{n}_ndim" in source) for n in self.input_names
        ]
        self.attributes = [(a, t) for a, t in METAL_ATTRIBUTES if a in source]
        for a, _ in self.attributes:
            if a not in _ATTR_VALUE:
                raise ValueError(f"Metal emulator: attribute {a!r} is not emulated; use one of {sorted(_ATTR_VALUE)}")
        self.last_switches = 0

    def build_source(self, inputs, output_dtypes, template=()) -> tuple[str, str]:
        """(kernel source as mx.fast.metal_kernel writes it, host name of the instantiation)."""
        fn = f"custom_kernel_{self.name}"
        out = [self.header]
        if template:
            params = []
            for tname, v in template:
                kind = "bool" if isinstance(v, (bool, np.bool_)) else "int" if isinstance(v, (int, np.integer)) \
                    else "typename"
                params.append(f"{kind} {tname}")
            out.append("template <" + ", ".join(params) + ">\n")
        out.append(f"[[kernel]] void {fn}(\n")
        args, idx = [], 0
        for name, arr, (shp, strd, nd) in zip(self.input_names, inputs, self.shape_infos):
            ref = "&" if arr.ndim == 0 else "*"
            args.append(f"  const device {_type_string(arr.dtype)}{ref} {name} [[buffer({idx})]]")
            idx += 1
            if arr.ndim > 0:
                if shp:
                    args.append(f"  const constant int* {name}_shape [[buffer({idx})]]")
                    idx += 1
                if strd:
                    args.append(f"  const constant int64_t* {name}_strides [[buffer({idx})]]")
                    idx += 1
                if nd:
                    args.append(f"  const constant int& {name}_ndim [[buffer({idx})]]")
                    idx += 1
        for name, dt in zip(self.output_names, output_dtypes):
            args.append(f"  device {_type_string(dt)}* {name} [[buffer({idx})]]")
            idx += 1
        args += [f"  {t} {a} [[{a}]]" for a, t in self.attributes]
        out.append(",\n".join(args) + ") {\n" + self.source + "\n}\n")
        call = fn
        if template:
            targs = "<" + ", ".join(_template_value(v) for _, v in template) + ">"
            call = fn + targs
            host = (fn + "_" + targs.replace("<", "").replace(">", "").replace(", ", "_")).replace("-", "m")
            out.append(f'\ntemplate [[host_name("{host}")]] [[kernel]] decltype({call}) {call};\n')
        return "".join(out), call

    def _driver(self, call: str, inputs, output_dtypes) -> str:
        params, slot = [], 0
        for arr, (shp, strd, nd) in zip(inputs, self.shape_infos):
            ty = _type_string(arr.dtype)
            params.append(f"*(const {ty}*)bufs[{slot}]" if arr.ndim == 0 else f"(const {ty}*)bufs[{slot}]")
            slot += 1
            if arr.ndim > 0:
                if shp:
                    params.append(f"(const int*)bufs[{slot}]")
                    slot += 1
                if strd:
                    params.append(f"(const int64_t*)bufs[{slot}]")
                    slot += 1
                if nd:
                    params.append(f"*(const int*)bufs[{slot}]")
                    slot += 1
        for dt in output_dtypes:
            params.append(f"({_type_string(dt)}*)bufs[{slot}]")
            slot += 1
        params += [_ATTR_VALUE[a] for a, _ in self.attributes]
        return (
            '\nextern "C" int emu_run(void** bufs, uint gx, uint gy, uint gz, int threads, int policy,\n'
            "                        uint64_t seed, char* err, int errlen, long long* switches) {\n"
            "  auto fn = [&](int t) {\n"
            "    emu::Group& g = *emu::G;\n"
            "    (void)g;\n"
            f"    {call}({', '.join(params)});\n"
            "  };\n"
            "  std::string e = emu::run_grid(uint3{gx, gy, gz}, threads, policy, seed, fn, switches);\n"
            "  if (e.empty()) return 0;\n"
            "  std::snprintf(err, errlen, \"%s\", e.c_str());\n"
            "  return 1;\n"
            "}\n"
        )

    def __call__(self, inputs, output_shapes, output_dtypes, grid, threadgroup, template=(), init_value=None,
                 policy: str = "random", seed: int = 0):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"Metal emulator: expected {len(self.input_names)} inputs, got {len(inputs)}")
        if len(output_shapes) != len(self.output_names) or len(output_dtypes) != len(self.output_names):
            raise ValueError(f"Metal emulator: expected {len(self.output_names)} output shapes and dtypes")
        if policy not in POLICIES:
            raise ValueError(f"Metal emulator: policy={policy!r}; use one of {sorted(POLICIES)}")
        (gx, gy, gz), (tx, ty, tz) = grid, threadgroup
        if ty != 1 or tz != 1 or tx <= 0 or gx % tx:
            raise ValueError(
                f"Metal emulator: grid {grid} / threadgroup {threadgroup}: groups must be 1-D along x and "
                "the grid a whole number of them (the dialect's rule)"
            )
        inputs = [np.ascontiguousarray(a) for a in inputs]
        src, call = self.build_source(inputs, output_dtypes, template)
        cpp = '#include "metal_shim.h"\n#include <cstdio>\n' + src + self._driver(call, inputs, output_dtypes)
        lib = _compile(cpp)
        keep, ptrs = [], []
        for arr, (shp, strd, nd) in zip(inputs, self.shape_infos):
            keep.append(arr)
            if arr.ndim > 0:
                if shp:
                    keep.append(np.asarray(arr.shape, np.int32))
                if strd:
                    keep.append(np.asarray([s // arr.itemsize for s in arr.strides], np.int64))
                if nd:
                    keep.append(np.asarray(arr.ndim, np.int32))
        outs = []
        for shape, dt in zip(output_shapes, output_dtypes):
            o = np.empty(shape, np.dtype(dt))
            if init_value is not None:
                o[...] = init_value
            elif np.issubdtype(o.dtype, np.floating):
                o[...] = np.nan  # poison: an element the kernel never writes stays NaN
            else:
                o.view(np.uint8)[...] = 0xA5
            outs.append(o)
        keep += outs
        for a in keep:
            ptrs.append(a.ctypes.data_as(ctypes.c_void_p))
        arr_t = ctypes.c_void_p * max(1, len(ptrs))
        err = ctypes.create_string_buffer(512)
        switches = ctypes.c_longlong(0)
        rc = lib.emu_run(arr_t(*ptrs), gx // tx, gy, gz, tx, POLICIES[policy], seed, err, 512,
                         ctypes.byref(switches))
        self.last_switches = switches.value
        if rc != 0:
            raise RuntimeError(f"Metal emulator: kernel {self.name!r} failed: {err.value.decode()}")
        return outs
