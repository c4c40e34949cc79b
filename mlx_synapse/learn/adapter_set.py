"""Several named adapters for one loaded model, switched without reloading the base.

Each adapter's config and weights are read once and kept (they are small);
``activate(name)`` loads that adapter's matrices into the model -- in place when
its structure (type, layers, rank, keys) matches the active one, else by
re-wrapping the layers -- and ``deactivate()`` gives back the base layers
themselves. Each adapter keeps its own scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import mlx.core as mx
import mlx.nn as nn

from .adapters import apply_adapter_weights, read_adapter, same_structure
from .lora import lora_layers, remove_lora, set_scale


class AdapterSet:
    """Named adapters over ``model`` (MLX, trainable form)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._adapters: Dict[str, tuple] = {}  # name -> (config, weights)
        self._scales: Dict[str, float] = {}
        self.active: Optional[str] = None

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def names(self) -> list:
        return sorted(self._adapters)

    def add(self, name: str, path: Union[str, Path, None] = None, *, config: Optional[dict] = None,
            weights: Optional[dict] = None) -> None:
        """Register an adapter directory (or a config + weights) under ``name``."""
        if not name:
            raise ValueError("[adapters] an adapter needs a non-empty name.")
        if path is not None:
            config, weights = read_adapter(path)
        if config is None or weights is None:
            raise ValueError("[adapters] add() needs a directory, or both config and weights.")
        self._adapters[name] = (config, dict(weights))
        self._scales[name] = float(config["lora_parameters"]["scale"])
        if self.active == name:  # re-registered while active: show the new weights
            self.activate(name)

    def remove(self, name: str) -> None:
        self._get(name)
        if self.active == name:
            self.deactivate()
        del self._adapters[name], self._scales[name]

    def _get(self, name: str) -> tuple:
        if name not in self._adapters:
            known = ", ".join(self.names()) or "none"
            raise ValueError(f"[adapters] no adapter named {name!r}; known: {known}.")
        return self._adapters[name]

    def activate(self, name: str, scale: Optional[float] = None) -> None:
        """Make ``name`` the model's adapter (optionally at a new scale, kept for next time)."""
        config, weights = self._get(name)
        if scale is not None:
            self._scales[name] = float(scale)
        current = self._adapters.get(self.active) if self.active is not None else None
        if current is not None and lora_layers(self.model) and same_structure(current[0], config):
            self.model.load_weights(list(weights.items()), strict=False)
            mx.eval(self.model.parameters())
        else:
            remove_lora(self.model)
            apply_adapter_weights(self.model, config, weights, f"adapter {name!r}")
        set_scale(self.model, self._scales[name])
        self.active = name

    def set_scale(self, name: str, scale: float) -> None:
        """The scale ``name`` runs at (0: as if absent); applied now if it is active."""
        self._get(name)
        self._scales[name] = float(scale)
        if self.active == name:
            set_scale(self.model, scale)

    def deactivate(self) -> None:
        """Back to the bare base model (its own layers: logits bit-identical to before any adapter)."""
        remove_lora(self.model)
        self.active = None
