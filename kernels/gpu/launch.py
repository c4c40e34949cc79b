"""One kernel body, three ways to run it: ``mx.fast.metal_kernel`` (Apple GPU),
``mx.fast.cuda_kernel`` (NVIDIA GPU) and the Metal emulator (CPU, tests)."""

from __future__ import annotations

from . import dialect


class GpuKernel:
    """A kernel body in the shared dialect with its names; instantiated lazily per backend."""

    def __init__(self, name: str, input_names, output_names, body: str, header: str = ""):
        self.name = name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.body = body
        self.header = header
        self._built = {}

    def source(self, backend: str) -> tuple[str, str]:
        """(header, source) of the ``backend`` instantiation."""
        return dialect.instantiate(backend, self.body, self.header)

    def mlx(self, backend: str):
        """The ``mx.fast.metal_kernel`` / ``mx.fast.cuda_kernel`` callable (built once)."""
        if backend not in self._built:
            import mlx.core as mx

            header, source = self.source(backend)
            make = mx.fast.metal_kernel if backend == "metal" else mx.fast.cuda_kernel
            self._built[backend] = make(
                name=self.name, input_names=self.input_names, output_names=self.output_names,
                source=source, header=header,
            )
        return self._built[backend]

    def emulator(self):
        """The Metal instantiation under the CPU emulator (same call as ``mx.fast.metal_kernel``)."""
        if "emulator" not in self._built:
            from .emulator import MetalEmulatorKernel

            header, source = self.source("metal")
            self._built["emulator"] = MetalEmulatorKernel(
                self.name, self.input_names, self.output_names, source, header
            )
        return self._built["emulator"]
