"""Hybrid retrieval: full-text BM25 and dense INT8 cosines fused, with recency and a second hop.

A sentence encoder and a word index fail on different questions: "Where is my sibling
based?" finds "My sister lives in Porto." by meaning, "What did Caroline paint in
July?" finds the turn by its rare words. :func:`hybrid_search` asks both (the bank's
INT8 index and the store's FTS5 table, :meth:`.MemoryStore.text_search`) for a pool of
candidates each and fuses the two rankings by reciprocal rank
(``w / (rrf_k + rank)`` per list), plus a small term for the newer of the candidates
(a change said later outranks the value it replaces).

Two-hop questions ("Where does my sister live?" over "My sister is called Ilse." and
"Ilse lives in Porto.") need a fact that shares no word with the question: the names
in the first hits (capitalised words inside a sentence) are searched again in the word
index, and what they find joins the ranking just below the hit that named them.

How many memories to return: up to ``k``, stopping early (``adaptive=True``) where the
fused score falls below ``drop`` times the one before it. Entries whose metadata has a
non-null ``superseded_by`` (a fact replaced by a newer one) are left out unless
``include_history=True``.

Query cleaning (:func:`query_terms`): words of the query, case-folded, question words and
stopwords out; each is quoted when it reaches FTS5 (:func:`.store.fts_match`), so no
user text can be read as query syntax.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np

from .lexical import STOPWORDS

if TYPE_CHECKING:  # pragma: no cover
    from .bank import Entry, MemoryBank

__all__ = ["Hit", "RetrievalParams", "hybrid_search", "query_terms", "entities"]

_WORD = re.compile(r"\w+", re.UNICODE)
# Words that ask rather than tell, beyond the stopwords: they name no memory.
_ASK = frozenset("know remember recall said say says told tell name called anything something "
                 "ever favorite favourite one thing kind get got like".split())
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+|:\s+")
_CAPITAL = re.compile(r"\b[^\W\d_][\w'\u2019-]*", re.UNICODE)


def query_terms(text: str) -> List[str]:
    """The words of ``text`` worth matching: case-folded, stopwords and question words out.

    When nothing is left (a question made only of such words) every word is kept, so a
    query never matches nothing for want of terms. Non-English words are kept as they are.
    """
    words = [w.casefold() for w in _WORD.findall(text.replace("\u2019", "'"))]
    words = [w for w in words if w.strip("_")]
    keep = [w for w in words if w not in STOPWORDS and w not in _ASK and len(w) > 1]
    return list(dict.fromkeys(keep or words))


def entities(text: str, exclude: Sequence[str] = ()) -> List[str]:
    """Names in ``text``: capitalised words that do not open a sentence and are not
    stopwords, case-folded, without those in ``exclude``, in order of appearance."""
    skip = set(exclude)
    out = []
    for sentence in _SENTENCE.split(text):
        for j, m in enumerate(_CAPITAL.finditer(sentence)):
            w = m.group(0)
            if j == 0 or not w[0].isupper():
                continue
            w = w.replace("\u2019", "'").split("'")[0].casefold()
            if len(w) > 1 and w not in STOPWORDS and w not in _ASK and w not in skip:
                out.append(w)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class RetrievalParams:
    """The fusion's settings (tuned on the conversation suite's dev split only).

    pool: candidates taken from each list. rrf_k: reciprocal-rank constant (small: the
    top ranks count more). w_dense, w_text, w_recency: weights of the dense ranking, the
    BM25 ranking and the newest-first ranking of the candidates. hop_from: how many of the
    first hits lend their names to the second hop; hop_pool: hits per hop; w_hop: a
    hop hit's score as a share of the score of the hit that named it. drop: adaptive
    cut, stop where a score is below ``drop`` times the one before it.
    """

    pool: int = 40
    rrf_k: float = 10.0
    w_dense: float = 1.0
    w_text: float = 1.5
    w_recency: float = 0.15
    hop_from: int = 2
    hop_pool: int = 3
    w_hop: float = 0.9
    drop: float = 0.6


@dataclass(frozen=True)
class Hit:
    """One retrieved memory: the entry, its fused score, its INT8 cosine to the query,
    its BM25 score (0 when the word index did not find it) and, for a second-hop hit,
    the id of the hit whose name led to it."""

    entry: "Entry"
    score: float
    cosine: float
    text_score: float
    via: Optional[int] = None


def _cosines(idx, ids: List[int], q: np.ndarray) -> Dict[int, float]:
    """INT8 cosines of ``ids`` (those in the index) to the unit query ``q``."""
    have = [i for i in ids if i in idx]
    if not have:
        return {}
    codes, _ = idx.get_vectors(np.array(have, np.int64))
    c = codes.astype(np.float32)
    norms = np.linalg.norm(c, axis=1)
    cos = (c @ q) / np.where(norms > 0, norms, 1.0)
    return dict(zip(have, cos.astype(np.float32).tolist()))


def _drops(score: float, previous: float, drop: float) -> bool:
    return score < drop * previous


def adaptive_prefix(hits: Sequence["Hit"], drop: float = RetrievalParams.drop) -> List["Hit"]:
    """The hits ``hybrid_search(..., adaptive=True)`` returns, from the ones it returns with
    ``adaptive=False`` (same query and ``k``): up to where a fused score falls below ``drop``
    times the one before it."""
    out: List[Hit] = []
    for h in hits:
        if out and _drops(h.score, out[-1].score, drop):
            break
        out.append(h)
    return out


def hybrid_search(bank: "MemoryBank", query: str, k: int = 10, *, user: str, include_history: bool = False,
                  adaptive: bool = True, hops: int = 1, min_score: Optional[float] = None, touch: bool = True,
                  params: RetrievalParams = RetrievalParams()) -> List[Hit]:
    """Up to ``k`` memories of ``user`` for the text ``query``, best first (see the module
    docstring). ``min_score`` keeps only hits whose INT8 cosine reaches it, and second-hop
    hits of those. ``hops=0`` skips the second hop. Hits count as accesses unless
    ``touch=False``."""
    p = params
    q = bank._query_vector(query)
    bank._sync()
    idx = bank._index(user)
    if not len(idx):
        return []
    d_ids, d_cos = idx.search(q, min(len(idx), p.pool))
    terms = query_terms(query)
    store = bank.store
    t_hits = store.text_search(user, terms, p.pool, include_history=include_history)
    cand = list(dict.fromkeys(d_ids.tolist() + [i for i, _ in t_hits]))
    info = store.brief(cand)  # id -> (created, superseded, text)
    ok = lambda i: i in info and (include_history or not info[i][1])  # noqa: E731
    cos = {i: c for i, c in zip(d_ids.tolist(), d_cos.tolist())}
    bm25 = {i: s for i, s in t_hits}
    fused: Dict[int, float] = {}
    for w, ranked in ((p.w_dense, [i for i in d_ids.tolist() if ok(i)]), (p.w_text, [i for i, _ in t_hits if ok(i)])):
        for r, i in enumerate(ranked):
            fused[i] = fused.get(i, 0.0) + w / (p.rrf_k + r + 1)
    if p.w_recency and len(fused) > 1:
        newest = sorted(fused, key=lambda i: (-info[i][0], -i))
        for r, i in enumerate(newest):
            fused[i] += p.w_recency / (p.rrf_k + r + 1)
    order = sorted(fused, key=lambda i: (-fused[i], i))
    via: Dict[int, int] = {}
    if hops > 0 and order:
        named = set(terms)
        for src in order[:p.hop_from]:
            names = entities(info[src][2], exclude=named)
            if not names:
                continue
            named.update(names)
            for r, (i, s) in enumerate(store.text_search(user, names, p.hop_pool + 1, include_history=include_history)):
                if i == src or (i in info and not ok(i)):
                    continue
                bm25.setdefault(i, s)
                score = p.w_hop * fused[src] * (p.rrf_k + 1) / (p.rrf_k + r + 1)
                if score > fused.get(i, 0.0):
                    fused[i] = score
                    via[i] = src
        order = sorted(fused, key=lambda i: (-fused[i], i))
    missing = [i for i in order[: 2 * k + 8] if i not in cos]
    cos.update(_cosines(idx, missing, q))
    if min_score is not None:
        passed = {i for i in order if cos.get(i, -1.0) >= min_score}
        order = [i for i in order if i in passed or via.get(i) in passed]
    picked: List[int] = []
    for i in order:
        if len(picked) >= k:
            break
        if adaptive and picked and _drops(fused[i], fused[picked[-1]], p.drop):
            break
        picked.append(i)
    rows = {r["id"]: r for r in store.get_many(picked)}
    hits = [Hit(bank._entry(rows[i]), float(fused[i]), float(cos.get(i, math.nan)), float(bm25.get(i, 0.0)),
                via.get(i)) for i in picked if i in rows and rows[i]["user"] == user]
    if touch:
        bank._note_uses([h.entry.id for h in hits], time.time())
    return hits
