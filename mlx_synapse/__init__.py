"""mlx_synapse: small language models in MLX that personalise through memory.

Public API: ``load``, ``generate``, ``stream_generate``, ``generate_step``.
Imports are lazy so that the NumPy backend works where MLX is absent.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Nothing leaves the machine unless the user asked for a download.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# In a source checkout without `pip install`, kernels/, convert/ and benchmarks/
# sit beside this package; map them to mlx_synapse.kernels etc. as the install does.
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_root, "pyproject.toml")) and os.path.isdir(os.path.join(_root, "convert")):
    __path__.append(_root)  # type: ignore[name-defined]

_LAZY = {
    "load": ("loader", "load"),
    "generate": ("generate", "generate"),
    "stream_generate": ("generate", "stream_generate"),
    "generate_step": ("generate", "generate_step"),
}
# The submodule mlx_synapse.generate shares its name with the function: once the
# submodule is imported, the package attribute is the module, which generate.py makes
# callable as the function (importing it here eagerly would upset `python -m`).

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module 'mlx_synapse' has no attribute {name!r}")
