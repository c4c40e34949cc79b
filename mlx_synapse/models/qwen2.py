"""Qwen2 / Qwen2.5: the Llama decoder with biases on the q, k and v projections."""

from __future__ import annotations

from dataclasses import dataclass

from . import llama


@dataclass
class ModelArgs(llama.ModelArgs):
    rope_theta: float = 1000000.0

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def o_bias(self) -> bool:
        return False


Model = llama.Model
