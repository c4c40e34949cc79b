"""Word overlap between a query and candidate memories, to re-rank dense retrieval.

A sentence encoder places "What is my sister's dog called?" about as close to "My
sister's name is Ana." as to "My sister's dog is called Rex."; the words the query
shares with each candidate tell them apart. :func:`overlap` gives, per candidate, the
share of the query's content words (IDF-weighted over the candidates themselves, so
a word every candidate has counts for little) that the candidate contains.
``MemoryBank.search(..., lexical=w)`` used to add ``w * overlap`` to the cosine of a
pool of dense candidates; it now uses the store's FTS5 BM25 score instead (see
:mod:`.retrieval`), and :func:`overlap` is kept for callers and benchmarks that compare
against it. The figures below are of the word-overlap re-rank.

Measured with ``python -m mlx_synapse.benchmarks.memory_retrieval --encoders minilm
--sweep none --lexical 0.2 --set personal:300`` (``all-MiniLM-L6-v2``, top-32 pool,
w = 0.2): recall@1 over the personalization benchmark's 900 questions about 300 facts
+ 120 distractors 0.894 -> 0.929; 1,000 facts (``--set personal:1000``) 0.719 -> 0.826;
the low-overlap paraphrase set (``--set retrieval``: 715 queries, word Jaccard 0.084)
0.459 -> 0.446, the price of trusting shared words.
"""

from __future__ import annotations

import math
import re
from typing import FrozenSet, Sequence, Tuple

import numpy as np

__all__ = ["terms", "overlap", "statement_key", "STOPWORDS"]

STOPWORDS: FrozenSet[str] = frozenset(
    "a an the is are was were am be been being do does did doing have has had i me my mine myself we us our ours "
    "you your yours he him his she her hers it its they them their theirs what whats who whose whom where when "
    "which why how that this these those to of in on at by for with from and or but not no so as if then than "
    "there here can could should would will shall may might must just also very too s t d ll m re ve tell remind "
    "please".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _stem(w: str) -> str:
    if w.endswith("'s"):
        w = w[:-2]
    w = w.replace("'", "")
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w


_TOKEN = re.compile(r"\w+")


def statement_key(text: str) -> Tuple[str, ...]:
    """The words of ``text`` in order, case-folded, without punctuation or spacing: two
    texts with the same key say the same thing (the bank merges only such near-duplicates;
    a different number, name or negation keeps a text apart, however close its vector)."""
    return tuple(_TOKEN.findall(text.casefold()))


def terms(text: str) -> FrozenSet[str]:
    """Content words of ``text``: lowercased, possessive and plural ``s`` dropped, stopwords out."""
    out = set()
    for w in _WORD.findall(text.lower().replace("\u2019", "'")):
        s = _stem(w)
        if s and s not in STOPWORDS and w not in STOPWORDS:
            out.add(s)
    return frozenset(out)


def overlap(query: str, texts: Sequence[str]) -> np.ndarray:
    """For each of ``texts``, the IDF-weighted share of ``query``'s content words it
    contains, in [0, 1]; document frequencies are counted over ``texts``."""
    q = terms(query)
    out = np.zeros(len(texts), np.float32)
    if not q or not texts:
        return out
    docs = [terms(t) for t in texts]
    n = len(docs)
    idf = {w: math.log((n + 1) / (sum(w in d for d in docs) + 0.5)) for w in q}
    total = sum(idf.values())
    if total <= 0:
        return out
    for i, d in enumerate(docs):
        out[i] = sum(v for w, v in idf.items() if w in d) / total
    return out
