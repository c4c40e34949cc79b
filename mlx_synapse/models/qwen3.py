"""Qwen3 (dense): the Llama decoder with per-head RMSNorm on queries and keys."""

from __future__ import annotations

from dataclasses import dataclass

from . import llama


@dataclass
class ModelArgs(llama.ModelArgs):
    rope_theta: float = 1000000.0

    @property
    def qk_norm(self) -> bool:
        return True


Model = llama.Model
