"""The things ``python -m mlx_synapse.bench`` times: this package's tiers and its peers.

Each runner loads one model once and then ``generate(ids, n)`` yields exactly
``n`` greedy tokens (EOS ignored), each one already computed when it is
yielded, so the time to the first yield is the time to the first token.

Tiers (this package):
    mlx-gpu        MLX backend on Metal or CUDA
    mlx-cpu        MLX backend on MLX's CPU device (all cores)
    numpy          NumPy backend, all cores
    single-thread  NumPy backend on one core (a Raspberry Pi proxy)
Peers:
    mlx-lm         mlx-lm on MLX's default device (the GPU where there is one)
    mlx-lm-cpu     mlx-lm on MLX's CPU device
    torch          PyTorch eager (transformers model, greedy loop with its KV cache)
                   on CUDA where there is one (bfloat16), else the CPU (float32)
    torch-cpu      the same on the CPU, float32
    llama.cpp      llama-cpp-python on the GGUF, all cores (GPU layers if built for one)
    llama.cpp-1t   the same with one thread
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Optional

TIERS = ("mlx-gpu", "mlx-cpu", "numpy", "single-thread")
PEERS = ("mlx-lm", "mlx-lm-cpu", "torch", "torch-cpu", "llama.cpp", "llama.cpp-1t")
ONE_THREAD = ("single-thread", "llama.cpp-1t")

# How to install what a peer needs, for the message when it is missing.
INSTALL = {
    "mlx-lm": "pip install mlx-lm",
    "torch": "pip install torch transformers",
    "llama.cpp": "pip install llama-cpp-python",
}


def package_of(name: str) -> str:
    if name.startswith("mlx-lm"):
        return "mlx-lm"
    if name.startswith("torch"):
        return "torch"
    if name.startswith("llama.cpp"):
        return "llama.cpp"
    return "mlx-synapse"


def one_thread_env(env: dict) -> dict:
    """Environment that keeps every BLAS / OpenMP / numba pool at one thread."""
    env = dict(env)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMBA_NUM_THREADS", "MLX_SYNAPSE_DECODE_THREADS", "MLX_SYNAPSE_THREADS"):
        env[key] = "1"
    return env


def pin_one_core() -> Optional[int]:
    """Restrict this process to one CPU (Linux); returns it, or None where affinity is not settable."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


@dataclass
class Runner(ABC):
    name: str
    info: dict = field(default_factory=dict)  # backend, device, dtype, threads, weights

    @abstractmethod
    def generate(self, ids: list, n: int) -> Iterator[int]:
        """Yield exactly ``n`` greedy tokens after ``ids``, each computed when yielded."""

    def reset_peak(self) -> None:
        """Start a new peak-memory measurement of the backend's own allocator."""

    def peak_bytes(self) -> Optional[int]:
        """The backend's own peak since ``reset_peak`` (None where it keeps none)."""
        return None


def _mlx_device(device: str):
    import mlx.core as mx

    if device == "gpu":
        if not gpu_available():
            raise RuntimeError("MLX has no GPU here (neither Metal nor CUDA); drop the mlx-gpu tier or the GPU peer.")
        mx.set_default_device(mx.gpu)
    else:
        mx.set_default_device(mx.cpu)
    return mx


def gpu_available() -> bool:
    """Whether MLX can run on a GPU (Metal on a Mac, CUDA on Linux) here."""
    return gpu_kind() is not None


def gpu_kind() -> Optional[str]:
    """"metal", "cuda" or None: which GPU MLX would use."""
    try:
        import mlx.core as mx
    except ImportError:
        return None
    for kind in ("metal", "cuda"):
        probe = getattr(mx, kind, None)
        try:
            if probe is not None and probe.is_available():
                return kind
        except Exception:  # noqa: BLE001 - a broken backend is an absent one
            pass
    return None


class MlxRunner(Runner):
    """This package's MLX backend, or mlx-lm, on one MLX device."""

    def __init__(self, name: str, path: str, device: str, peer: bool):
        mx = _mlx_device(device)
        self.mx = mx
        if peer:
            from mlx_lm import load
            from mlx_lm.generate import generate_step

            self.model, _ = load(path)
            backend = "mlx-lm"
        else:
            from mlx_synapse.generate import generate_step
            from mlx_synapse.loader import load

            self.model, _ = load(path, backend="mlx")
            backend = "mlx_synapse[mlx]"
        self._step = generate_step
        dtypes = sorted({str(v.dtype).replace("mlx.core.", "") for _, v in _leaves(self.model.parameters())})
        quant = "quantized" if any(hasattr(m, "group_size") for _, m in self.model.named_modules()) else "float"
        super().__init__(name, {"backend": backend, "device": f"mlx {device}" + (f" ({gpu_kind()})" if device == "gpu" else ""),
                                "weights": f"{quant}, {'/'.join(dtypes)}", "threads": None})

    def generate(self, ids, n):
        for tok, _ in self._step(self.mx.array(ids), self.model, max_tokens=n):
            yield tok

    def reset_peak(self):
        self.mx.reset_peak_memory()

    def peak_bytes(self):
        return int(self.mx.get_peak_memory())


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


def numpy_bytes(obj, seen: Optional[set] = None) -> int:
    """Bytes of the distinct NumPy arrays reachable from ``obj`` (attributes, lists, dicts)."""
    import numpy as np

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        if isinstance(base, np.ndarray) and base is not obj:
            return numpy_bytes(base, seen)
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(numpy_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(numpy_bytes(v, seen) for v in obj)
    if isinstance(obj, type):
        return 0
    total = 0
    if hasattr(obj, "__dict__"):
        total += sum(numpy_bytes(v, seen) for v in vars(obj).values())
    for name in getattr(type(obj), "__slots__", ()):  # e.g. the engine's packed QMat
        total += numpy_bytes(getattr(obj, name, None), seen)
    return total


class NumpyRunner(Runner):
    """This package's NumPy backend. Its own peak is the weights plus the NumPy
    allocations traced (tracemalloc) during one extra, uncounted generation."""

    def __init__(self, name: str, path: str, threads: Optional[int]):
        from mlx_synapse.backends.numpy import generate_step, load_model

        self.model = load_model(path)
        if threads:
            self.model.use_engine(True, threads=threads)
        eng = self.model.engine
        self._step = generate_step
        self.weight_bytes = numpy_bytes(self.model.weights)
        info = {"backend": "mlx_synapse[numpy]", "device": "cpu", "threads": threads,
                "weights": "float32 (expanded at load)", "engine": self.model.engine_status}
        if eng is not None:
            kinds = {0: "float32", 1: "4-bit", 2: "8-bit"}
            info.update(threads=eng.threads, engine=f"C engine ({eng.simd})", decode_bytes=eng.weight_bytes,
                        weights="decode: " + "+".join(kinds[k] for k in sorted(eng.kinds)) + " codes; prefill: float32")
        super().__init__(name, info)

    def generate(self, ids, n):
        for tok, _ in self._step(ids, self.model, max_tokens=n):
            yield tok

    def traced_peak(self, ids: list, n: int) -> int:
        import tracemalloc

        tracemalloc.start()
        try:
            for _ in self.generate(ids, n):
                pass
            return self.weight_bytes + tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


class TorchRunner(Runner):
    """PyTorch eager: the transformers model called token by token with its KV cache."""

    def __init__(self, name: str, path: str, device: str, threads: Optional[int]):
        import torch
        from transformers import AutoModelForCausalLM

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("PyTorch sees no CUDA GPU here; use the torch-cpu peer.")
        if threads:
            torch.set_num_threads(threads)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.torch = torch
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        super().__init__(name, {"backend": f"torch {torch.__version__} eager", "device": device,
                                "weights": str(dtype).replace("torch.", ""),
                                "threads": torch.get_num_threads() if device == "cpu" else None})

    def generate(self, ids, n):
        torch = self.torch
        with torch.inference_mode():
            x = torch.tensor([ids], device=self.device)
            out = self.model(input_ids=x, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            tok = out.logits[0, -1].argmax()
            for i in range(n):
                yield int(tok.item())
                if i + 1 == n:
                    break
                out = self.model(input_ids=tok.view(1, 1), past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[0, -1].argmax()

    def reset_peak(self):
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_bytes(self):
        return int(self.torch.cuda.max_memory_allocated()) if self.device == "cuda" else None


class LlamaCppRunner(Runner):
    """llama.cpp through llama-cpp-python: prompt evaluated in one call, then one token at a time."""

    def __init__(self, name: str, gguf: str, threads: int, n_ctx: int):
        import llama_cpp

        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, n_gpu_layers=-1 if gpu else 0, verbose=False)
        super().__init__(name, {"backend": f"llama-cpp-python {llama_cpp.__version__}",
                                "device": "gpu offload" if gpu else "cpu", "threads": threads,
                                "weights": f"GGUF {os.path.basename(gguf)}"})

    def generate(self, ids, n):
        llm = self.llm
        llm.reset()  # no prefix reuse between trials
        llm.eval(ids)
        for i in range(n):
            tok = int(llm.sample(temp=0.0))
            yield tok
            if i + 1 < n:
                llm.eval([tok])


def build_runner(name: str, *, model_dir: str, torch_dir: Optional[str], gguf: Optional[str],
                 threads: int, n_ctx: int) -> Runner:
    """The runner called ``name`` (see the module docstring) for one weight form."""
    if name == "mlx-gpu":
        return MlxRunner(name, model_dir, "gpu", peer=False)
    if name == "mlx-cpu":
        return MlxRunner(name, model_dir, "cpu", peer=False)
    if name in ("numpy", "single-thread"):
        return NumpyRunner(name, model_dir, 1 if name == "single-thread" else threads)
    if name in ("mlx-lm", "mlx-lm-cpu"):
        device = "gpu" if name == "mlx-lm" and gpu_available() else "cpu"
        return MlxRunner(name, model_dir, device, peer=True)
    if name in ("torch", "torch-cpu"):
        import torch

        device = "cuda" if name == "torch" and torch.cuda.is_available() else "cpu"
        return TorchRunner(name, torch_dir or model_dir, device, threads)
    if name in ("llama.cpp", "llama.cpp-1t"):
        if not gguf:
            raise RuntimeError("llama.cpp needs a GGUF file: pass --gguf PATH (the default model's is found "
                               "automatically for the q4 form).")
        return LlamaCppRunner(name, gguf, 1 if name == "llama.cpp-1t" else threads, n_ctx)
    raise ValueError(f"unknown runner {name!r}; tiers: {', '.join(TIERS)}; peers: {', '.join(PEERS)}")
