"""LoCoMo-style retrieval: long multi-session dialogues, evidence recall@k of the bank.

Each dialogue is one user's messages over ``sessions`` days (chit-chat with facts of
every answerable category scattered through it: changes, corrections, two-hop pairs,
lists, dated events), hundreds of turns long, and questions that name the turns holding
their evidence, as in snap-research/locomo. A question counts at k when *all* its
evidence turns are among the bank's top k. No generation: fast.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .families import CATEGORIES, families
from .generator import User, _assemble, _chatter, _Draw, _event, _EPOCH

__all__ = ["build_dialogues", "evidence_recall", "recall_at"]


def build_dialogues(split: str, n: int, seed: int = 0, sessions: int = 12, turns: int = 300) -> List[User]:
    """``n`` dialogues of ``split``: as many facts as the split's values allow (each
    answerable category in turn), padded with chit-chat to ``turns`` messages spread
    over ``sessions`` days."""
    out = []
    cats = [c for c in CATEGORIES if c != "abstention"]
    for i in range(n):
        r = random.Random(f"locomo:{split}:{seed}:{i}")
        d = _Draw(r, split)
        events, progress = [], True
        while progress:
            progress = False
            for cat in r.sample(cats, len(cats)):
                fams = families(split, cat)
                for fam in r.sample(fams, len(fams)):
                    ev = _event(fam, d)
                    if ev is not None:
                        events.append(ev)
                        progress = True
                        break
        n_facts = sum(len(e.texts) for e in events)
        u = _assemble(f"locomo-{split}-{seed}-{i}", r, events, _chatter(r, split, max(0, turns - n_facts)),
                      _EPOCH, sessions)
        out.append(u)
    return out


def recall_at(ranked: Sequence[str], evidence: Sequence[str], k: int) -> bool:
    """All of ``evidence`` among the first ``k`` of ``ranked``."""
    return set(evidence) <= set(ranked[:k])


def evidence_recall(bank, dialogues: Sequence[User], ks: Sequence[int] = (5, 10),
                    lexical: Sequence[float] = (0.0, 0.2), progress=None) -> Dict[str, object]:
    """Store each dialogue's messages verbatim (message id in the metadata) and search
    with every question; recall@k per re-rank weight (0 = dense only) and category."""
    kmax = max(ks)
    rows = []
    for u in dialogues:
        bank.add_many([dict(text=m.text, force=True, source="locomo", metadata={"id": m.id}) for m in u.messages],
                      user=u.id)
        for q in u.questions:
            row = dict(question=q.text, category=q.category, evidence=list(q.evidence))
            for w in lexical:
                t0 = time.perf_counter()
                hits = bank.search(q.text, kmax, user=u.id, lexical=w, touch=False)
                row[f"ms@{w}"] = (time.perf_counter() - t0) * 1e3
                ranked = [(e.metadata or {}).get("id") for e, _ in hits]
                for k in ks:
                    row[f"r@{k}@{w}"] = recall_at(ranked, q.evidence, k)
            rows.append(row)
        if progress is not None:
            progress.update(1)
    res: Dict[str, object] = dict(dialogues=len(dialogues), questions=len(rows),
                                  turns=float(np.mean([len(u.messages) for u in dialogues])) if dialogues else 0.0,
                                  evidence_per_question=float(np.mean([len(r["evidence"]) for r in rows])) if rows else 0.0)
    for w in lexical:
        for k in ks:
            key = f"r@{k}@{w}"
            res[f"recall@{k} lexical={w}"] = float(np.mean([r[key] for r in rows])) if rows else float("nan")
            res[f"by_category recall@{k} lexical={w}"] = {
                c: float(np.mean([r[key] for r in rows if r["category"] == c]))
                for c in sorted({r["category"] for r in rows})}
    res["rows"] = rows
    return res
