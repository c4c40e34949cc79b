"""mlx_synapse: small language models in MLX that personalise through memory.

Public API: ``load``, ``generate``, ``stream_generate``, ``generate_step``.
Nothing here imports MLX, so that the NumPy backend works where MLX is absent.
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

# The submodule mlx_synapse.generate and the function generate share a name: import
# the functions now (generate.py imports no MLX at module level), so that the package
# attribute is the function however the submodule was first imported.
from .generate import generate, generate_step, stream_generate  # noqa: E402

_LAZY = {"load": ("loader", "load")}

__all__ = ["load", "generate", "stream_generate", "generate_step"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module 'mlx_synapse' has no attribute {name!r}")
