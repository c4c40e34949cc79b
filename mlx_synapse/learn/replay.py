"""Experience replay: a bounded, deduplicated, per-domain store of past training examples.

New learning is mixed with a share of replayed old examples so the adapter
keeps what it learned before. Each domain keeps at most ``per_domain``
examples; when full, the least important (then the oldest) leaves. Sampling is
without replacement with probability proportional to importance (Efraimidis-
Spirakis keys ``u ** (1 / w)``), from a seeded generator.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np


@dataclass
class Item:
    example: dict  # one JSONL example (chat, completions or text), as the trainer's data reads it
    domain: str
    importance: float
    seq: int  # insertion order, for ties


def _key(example: dict) -> str:
    """A whitespace- and case-insensitive fingerprint of an example's text."""
    text = json.dumps(example, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


class ReplayBuffer:
    """Args:
        per_domain: most examples kept per domain.
        seed: seed of the sampling generator.
    """

    def __init__(self, per_domain: int = 1000, seed: int = 0):
        if per_domain < 1:
            raise ValueError(f"[replay] per_domain must be at least 1 but got {per_domain}.")
        self.per_domain = per_domain
        self._items: Dict[str, Item] = {}
        self._seq = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._items)

    def domains(self) -> Dict[str, int]:
        """Domain -> number of examples held."""
        out: Dict[str, int] = {}
        for it in self._items.values():
            out[it.domain] = out.get(it.domain, 0) + 1
        return out

    def add(self, example: dict, domain: str = "general", importance: float = 1.0) -> bool:
        """Keep ``example``; a duplicate only raises the stored importance. Returns whether it is new."""
        if not (importance > 0 and math.isfinite(importance)):
            raise ValueError(f"[replay] importance must be a positive number but got {importance}.")
        k = _key(example)
        if k in self._items:
            it = self._items[k]
            it.importance = max(it.importance, importance)
            return False
        self._items[k] = Item(example, domain, float(importance), self._seq)
        self._seq += 1
        same = [(key, it) for key, it in self._items.items() if it.domain == domain]
        if len(same) > self.per_domain:
            key, _ = min(same, key=lambda kv: (kv[1].importance, kv[1].seq))
            del self._items[key]
        return k in self._items

    def sample(self, n: int, domain: Optional[str] = None) -> List[dict]:
        """Up to ``n`` distinct examples (of ``domain``, or any), drawn in proportion to importance."""
        items = [it for it in self._items.values() if domain is None or it.domain == domain]
        if n <= 0 or not items:
            return []
        w = np.array([it.importance for it in items])
        keys = np.log(self._rng.random(len(items))) / w  # log(u ** (1/w)): larger is earlier
        order = np.argsort(-keys, kind="stable")[:n]
        return [items[i].example for i in order]

    def mix(self, new: List[dict], share: float) -> List[dict]:
        """``new`` plus replayed examples making up ``share`` of the result (0 <= share < 1)."""
        if not 0 <= share < 1:
            raise ValueError(f"[replay] share must be in [0, 1) but got {share}.")
        n = int(round(len(new) * share / (1 - share)))
        return list(new) + self.sample(n)

    def state(self) -> dict:
        """Everything needed to rebuild the buffer (JSON-serialisable), generator state included."""
        return {"per_domain": self.per_domain, "seq": self._seq, "rng": self._rng.bit_generator.state,
                "items": [[it.example, it.domain, it.importance, it.seq] for it in self._items.values()]}

    @classmethod
    def from_state(cls, state: dict) -> "ReplayBuffer":
        buf = cls(per_domain=int(state["per_domain"]))
        buf._seq = int(state["seq"])
        buf._rng.bit_generator.state = state["rng"]
        for ex, dom, imp, seq in state["items"]:
            buf._items[_key(ex)] = Item(ex, dom, float(imp), int(seq))
        return buf
