"""LoCoMo-style retrieval: long multi-session dialogues, evidence recall@k of the bank.

Each dialogue is one user's messages over ``sessions`` days (chit-chat with facts of
every answerable category scattered through it: changes, corrections, two-hop pairs,
lists, dated events), hundreds of turns long, and questions that name the turns holding
their evidence, as in snap-research/locomo. A question counts at k when *all* its
evidence turns are among the bank's top k. No generation: fast.

:func:`load_locomo` reads the public LoCoMo release (snap-research/locomo) into the
same form, so the same recall is measured on it when the data is at hand.
"""

from __future__ import annotations

import json
import random
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .families import CATEGORIES, families
from .generator import _EPOCH, Message, Question, User, _assemble, _chatter, _Draw, _event

__all__ = ["build_dialogues", "evidence_recall", "load_locomo", "recall_at"]


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
                    lexical: Sequence[float] = (0.0, 0.2), progress=None, hybrid: bool = True,
                    params=None) -> Dict[str, object]:
    """Store each dialogue's messages verbatim (message id in the metadata) and search
    with every question; recall@k per re-rank weight (0 = dense only) and category, and
    (``hybrid``) of the fused BM25 + dense retrieval (:meth:`MemoryBank.retrieve`, fixed
    k, with ``params`` when given), reported as ``lexical=hybrid``."""
    kmax = max(ks)
    rows = []
    for u in dialogues:
        bank.add_many([dict(text=m.text, force=True, source="locomo", metadata={"id": m.id}) for m in u.messages],
                      user=u.id)
        for q in u.questions:
            row = dict(question=q.text, category=q.category, evidence=list(q.evidence))
            for w in list(lexical) + (["hybrid"] if hybrid else []):
                t0 = time.perf_counter()
                if w == "hybrid":
                    hits = [(h.entry, h.score) for h in bank.retrieve(q.text, kmax, user=u.id, adaptive=False,
                                                                      touch=False, params=params)]
                else:
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
    for w in list(lexical) + (["hybrid"] if hybrid else []):
        for k in ks:
            key = f"r@{k}@{w}"
            res[f"recall@{k} lexical={w}"] = float(np.mean([r[key] for r in rows])) if rows else float("nan")
            res[f"by_category recall@{k} lexical={w}"] = {
                c: float(np.mean([r[key] for r in rows if r["category"] == c]))
                for c in sorted({r["category"] for r in rows})}
    res["rows"] = rows
    return res


_LOCOMO_CATEGORIES = {1: "multi_hop", 2: "temporal", 3: "open_domain", 4: "single_hop", 5: "adversarial"}


def _locomo_samples(path: Path) -> List[dict]:
    """The samples of the public LoCoMo release at ``path``: ``locomo10.json`` (a list of
    samples with ``conversation`` and ``qa``), its ``.zip``, or a folder of per-conversation
    files (the multimodal release: sessions and ``qa`` at the top level)."""
    def read(name: str, data: bytes) -> List[dict]:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"[conversation] {name} is not LoCoMo JSON ({e}); give locomo10.json, its zip "
                             "or a folder of per-conversation .json files.") from None
        items = obj if isinstance(obj, list) else [obj]
        return [dict(s, _name=f"{Path(name).stem}" if len(items) == 1 else f"{Path(name).stem}-{i}")
                for i, s in enumerate(items) if isinstance(s, dict)]

    if not path.exists():
        raise FileNotFoundError(f"[conversation] LoCoMo data {path} not found; pass the path of locomo10.json "
                                "(github.com/snap-research/locomo, data/locomo10.zip) or leave --locomo-file out.")
    out: List[dict] = []
    if path.is_dir():
        for f in sorted(path.rglob("*.json")):
            out += read(str(f), f.read_bytes())
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            for n in sorted(z.namelist()):
                if n.endswith(".json"):
                    out += read(n, z.read(n))
    else:
        out = read(str(path), path.read_bytes())
    out = [s for s in out if "qa" in s]
    if not out:
        raise ValueError(f"[conversation] no LoCoMo conversation with 'qa' in {path}.")
    return out


def load_locomo(path) -> List[User]:
    """The public LoCoMo conversations as users: every turn (``"<speaker>: <text>"``, an
    image's caption appended) is a message with the turn's ``dia_id``; every question
    whose evidence ids all name turns is kept, with LoCoMo's category name."""
    users = []
    for s in _locomo_samples(Path(path)):
        conv = s.get("conversation", s)
        uid = f"locomo-{s['_name']}"
        sessions = sorted((int(k.split("_")[1]), v) for k, v in conv.items()
                          if k.startswith("session_") and k.count("_") == 1 and isinstance(v, list))
        messages = []
        for n, turns in sessions:
            for t in turns:
                text = f"{t.get('speaker', '')}: {t.get('text', '')}".strip()
                if t.get("blip_caption"):
                    text += f" [shares a photo of {t['blip_caption']}]"
                messages.append(Message(f"{uid}:{t['dia_id']}", float(n), text))
        ids = {m.id for m in messages}
        questions = []
        for i, q in enumerate(s["qa"]):
            ev = tuple(f"{uid}:{e.strip()}" for e in q.get("evidence", []) or [])
            if not ev or not set(ev) <= ids:
                continue
            questions.append(Question(f"{uid}:q{i}", uid, _LOCOMO_CATEGORIES.get(q.get("category"), "other"), "locomo",
                                      str(q["question"]), ((str(q.get("answer", "")),),), (), ev))
        users.append(User(uid, messages, questions, facts=len(messages)))
    return users
