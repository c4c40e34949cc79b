"""Running the conversation-memory suite: categories, scale, timings, and the tables.

Every system sees the same users and questions in the same process; users are taken
in turn by each system (so a slow spell of a shared machine falls on both).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .families import CATEGORIES
from .generator import Question, User, build_scale_user, build_users
from .scoring import score, wilson

__all__ = ["pick_users", "run_users", "run_categories", "run_scale", "summarize", "retrieval_timing",
           "ttft_timing", "table"]


def pick_users(split: str, limit: int, seed: int = 0, categories: Sequence[str] = CATEGORIES) -> List[User]:
    """Users of ``split`` whose questions give ``limit`` per category (the first ones, in
    user order); a user keeps only its chosen questions."""
    users, count, n = [], {c: 0 for c in categories}, 0
    while min(count.values()) < limit:
        batch = build_users(split, n + limit, seed, categories=categories)[n:]
        n += limit
        for u in batch:
            keep = [q for q in u.questions if count[q.category] < limit]
            for q in keep:
                count[q.category] += 1
            if keep:
                u.questions = keep
                users.append(u)
        if n > 50 * limit:
            raise ValueError(f"[conversation] could not draw {limit} questions of every category.")
    return users


def run_users(systems: Dict[str, object], users: Sequence[User], tick: Optional[Callable[[], None]] = None,
              label: str = "") -> List[dict]:
    """Ingest each user into every system, ask its questions; one row per (system, question)."""
    rows = []
    for u in users:
        for name, sysm in systems.items():
            t0 = time.perf_counter()
            sysm.ingest(u.id, u.messages)
            ingest_s = time.perf_counter() - t0
            for q in u.questions:
                a = sysm.answer(u.id, q.text)
                s = score(q, a.text, u.values)
                rows.append(dict(system=name, group=label or q.category, category=q.category, family=q.family,
                                 user=u.id, question=q.text, gold=[g[0] for g in q.gold],
                                 forbidden=list(q.forbidden[:1]), evidence=list(q.evidence), reply=a.text,
                                 shown=a.shown, right=s.right, abstained=s.abstained, old_value=s.old_value,
                                 answerable=q.answerable, ttft_s=a.ttft_s, prompt_tokens=a.prompt_tokens,
                                 ingest_s=ingest_s, messages=len(u.messages)))
                if tick is not None:
                    tick()
    return rows


def run_categories(systems, split: str, limit: int, seed: int = 0, tick=None) -> List[dict]:
    return run_users(systems, pick_users(split, limit, seed), tick)


def scale_users(split: str, scales: Sequence[int], limit: int, seed: int = 0) -> Dict[int, List[User]]:
    """Per scale, users with that many facts whose questions add up to ``limit``."""
    out = {}
    for s in scales:
        users, left, i = [], limit, 0
        while left > 0:
            u = build_scale_user(split, s, min(s, left), seed=seed * 1000 + i)
            users.append(u)
            left -= len(u.questions)
            i += 1
        out[s] = users
    return out


def run_scale(systems, split: str, scales: Sequence[int], limit: int, seed: int = 0, tick=None) -> List[dict]:
    rows = []
    for s, users in scale_users(split, scales, limit, seed).items():
        rows += run_users(systems, users, tick, label=f"scale {s}")
    return rows


def _rate(rows: Sequence[dict], key: str) -> dict:
    k, n = sum(bool(r[key]) for r in rows), len(rows)
    lo, hi = wilson(k, n)
    return dict(k=k, n=n, rate=k / n if n else float("nan"), ci95=[lo, hi])


def summarize(rows: Sequence[dict]) -> Dict[str, Dict[str, dict]]:
    """system -> group -> {right, wrong_abstention (answerable only), old_value, ttft_s}."""
    out: Dict[str, Dict[str, dict]] = {}
    for name in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == name]
        groups = {}
        order = {c: i for i, c in enumerate(CATEGORIES)}
        names = sorted(dict.fromkeys(r["group"] for r in mine),
                       key=lambda g: (order.get(g, len(order)), int(g.split()[-1]) if g.startswith("scale") else 0))
        for g in names:
            rs = [r for r in mine if r["group"] == g]
            ans = [r for r in rs if r["answerable"]]
            groups[g] = dict(right=_rate(rs, "right"),
                             wrong_abstention=_rate(ans, "abstained") if ans else None,
                             old_value=_rate(rs, "old_value") if any(r["forbidden"] for r in rs) else None,
                             ttft_s_p50=float(np.median([r["ttft_s"] for r in rs])))
        ans = [r for r in mine if r["answerable"] and not r["group"].startswith("scale")]
        if ans:
            groups["all answerable"] = dict(right=_rate(ans, "right"), wrong_abstention=_rate(ans, "abstained"),
                                            old_value=None, ttft_s_p50=float(np.median([r["ttft_s"] for r in ans])))
        out[name] = groups
    return out


def _cell(d: Optional[dict]) -> str:
    if not d or not d["n"]:
        return "—"
    lo, hi = d["ci95"]
    return f"{100 * d['rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] ({d['k']}/{d['n']})"


def table(summary: Dict[str, Dict[str, dict]], what: str = "right") -> str:
    """A Markdown table: one row per group, one column per system."""
    names = list(summary)
    groups = list(dict.fromkeys(g for s in summary.values() for g in s))
    lines = [f"| {what} | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for g in groups:
        lines.append(f"| {g} | " + " | ".join(_cell((summary[n].get(g) or {}).get(what)) for n in names) + " |")
    return "\n".join(lines)


def retrieval_timing(assistant, bank, user: str, texts: Sequence[str], queries: Sequence[str],
                     batch: int = 256) -> dict:
    """Fill ``user``'s bank with ``texts`` and time ``assistant.retrieve`` (search + re-rank
    as a turn runs it) per query with the query's encoding excluded: each query is
    searched once to encode it, then timed on the second call (the bank reuses the
    encoding of a recent text). The encoding's own time is reported beside."""
    for i in range(0, len(texts), batch):
        bank.add_many([dict(text=t, force=True, source="timing") for t in texts[i:i + batch]], user=user)
    first, second, notouch = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        assistant.retrieve(q)
        t1 = time.perf_counter()
        assistant.retrieve(q)
        t2 = time.perf_counter()
        bank.search(q, assistant.k, user=user, min_score=assistant.min_score, lexical=assistant.lexical, touch=False)
        t3 = time.perf_counter()
        first.append(t1 - t0)
        second.append(t2 - t1)
        notouch.append(t3 - t2)
    return dict(memories=len(bank.list(user=user)), queries=len(queries),
                retrieval_ms_p50=1e3 * float(np.median(second)), retrieval_ms_p90=1e3 * float(np.quantile(second, 0.9)),
                search_no_touch_ms_p50=1e3 * float(np.median(notouch)),
                encode_ms_p50=1e3 * float(np.median(np.subtract(first, second))))


def ttft_timing(with_memory, without_memory, user: str, questions: Sequence[str]) -> dict:
    """Time to first token of the same questions with the user's memories and on an
    empty user (the bare question), alternating, each in a fresh session."""
    w, wo = [], []
    for q in questions:
        wo.append(without_memory.answer(user + "-empty", q).ttft_s)
        w.append(with_memory.answer(user, q).ttft_s)
    a, b = float(np.median(w)), float(np.median(wo))
    return dict(questions=len(questions), ttft_s_p50_with=a, ttft_s_p50_without=b,
                ratio=a / b if b > 0 else math.nan, with_=w, without=wo)
