"""A learner's checkpoint: adapter (mlx-lm format) + replay buffer + EWC state, in one directory.

    adapter_config.json, adapters.safetensors   the adapter; ``base_model`` names the frozen base
    replay.json                                 the replay buffer (examples, importances, sampler state)
    ewc.safetensors, ewc.json                   the running Fisher, the anchor, lambda and gamma

The base weights are never trained, so the base is restored by loading the
model ``base_model`` names; mlx-lm reads the adapter files as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple, Union

import mlx.core as mx
import mlx.nn as nn

from .adapters import load_adapter, save_adapter
from .ewc import EWC
from .replay import ReplayBuffer


def save_checkpoint(path: Union[str, Path], model: nn.Module, buffer: Optional[ReplayBuffer] = None,
                    ewc: Optional[EWC] = None, base_model: Optional[str] = None) -> Path:
    """Write everything :func:`load_checkpoint` needs to ``path`` (a directory). Returns it."""
    path = Path(path)
    save_adapter(model, path, extra={"base_model": base_model} if base_model else None)
    for name in ("replay.json", "ewc.safetensors", "ewc.json"):
        (path / name).unlink(missing_ok=True)  # no stale state from an earlier learner
    if buffer is not None:
        (path / "replay.json").write_text(json.dumps(buffer.state()), encoding="utf-8")
    if ewc is not None:
        (path / "ewc.json").write_text(json.dumps({"lam": ewc.lam, "gamma": ewc.gamma}), encoding="utf-8")
        arrays = ewc.state()
        if arrays:
            mx.save_safetensors(str(path / "ewc.safetensors"), arrays)
    return path


def load_checkpoint(path: Union[str, Path], model: nn.Module) -> Tuple[dict, Optional[ReplayBuffer], Optional[EWC]]:
    """Apply the checkpoint's adapter to ``model`` (its frozen base) and rebuild the buffer and EWC.

    Returns:
        (adapter config, buffer or None, EWC or None).
    """
    path = Path(path)
    config = load_adapter(model, path)
    buffer = ewc = None
    if (path / "replay.json").is_file():
        try:
            buffer = ReplayBuffer.from_state(json.loads((path / "replay.json").read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"[checkpoint] {path / 'replay.json'} is unreadable ({e}).") from None
    if (path / "ewc.json").is_file():
        settings = json.loads((path / "ewc.json").read_text(encoding="utf-8"))
        ewc = EWC(lam=settings["lam"], gamma=settings["gamma"])
        if (path / "ewc.safetensors").is_file():
            ewc.load_state(mx.load(str(path / "ewc.safetensors")))
    return config, buffer, ewc
