"""The episodic memory bank: what the model remembers, per user, in one private file.

``MemoryBank(path, encoder)`` ties together the durable store (:mod:`.store`, SQLite),
one in-memory INT8 cosine index per user (:mod:`.index`), the surprise gate
(:mod:`.surprise`) and budgeted eviction (:mod:`.policy`)::

    bank = MemoryBank("~/.local/share/mlx_synapse/memory.db")   # all-MiniLM-L6-v2 by default
    bank.add("My sister Ana lives in Porto.", user="me")
    bank.search("Where is my sibling based?", k=3, user="me")     # [(Entry, cosine), ...]
    bank.forget(user="me")                                        # gone from the file's bytes too

What gets written (``add``):

1. The text is embedded. If an entry of the same user has cosine >= ``dedup``
   (0.95) to it and the same words (:func:`.lexical.statement_key`: case and
   punctuation aside), that entry is *refreshed* (``hits + 1``, ``last_access =
   now``) instead of a new one being added. Close vectors with different words
   (another number, name, negation) are two facts and both are kept.
2. Otherwise its surprise — given by the caller, or computed by the ``surprise``
   scorer (mean token NLL under the frozen LM, :class:`.SurpriseScorer`) — goes
   through the user's :class:`.SurpriseGate`: written only above the running
   ``mean + gamma * std``, unless ``force=True``. Without a surprise value every
   text is written.
3. New entries start 'hot' (float16 vector). Over ``budget_mb``, entries degrade
   hot -> warm (INT8) -> cold (text only, not searchable) -> evicted, lowest
   retention score first (:func:`.policy.plan_degradation`), down to 90% of the
   budget so that eviction does not run on every add.

Search scores every vector of the user with one INT8 matrix product; those cosines
are the scores, and only the rows returned are read from the file. A search
writes nothing: its hits are counted in memory (and shown by ``get``/``list``)
and written with the next write transaction, or at :meth:`MemoryBank.close`
(lost if the process dies first: they are statistics). A search never sees
another user's entries: each user has an index of their own, and every hit is
checked against the user before it is returned.

Other processes may write the same file: the bank notices their commits
(``PRAGMA data_version``) and reloads its indexes before the next operation.
"""

from __future__ import annotations

import getpass
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .index import VectorIndex
from .lexical import statement_key
from .policy import (
    EntryStats,
    FIFOPolicy,
    LearnedPolicy,
    LRUPolicy,
    RandomPolicy,
    entries_bytes,
    entry_bytes,
    plan_degradation,
)
from .records import _check_str
from . import transfer
from .store import MAX_NAME_BYTES, MemoryStore
from .transfer import EXPORT_FORMAT
from .surprise import SurpriseGate

__all__ = ["MemoryBank", "Entry", "WriteResult", "ScrubPending", "default_db_path", "default_user", "EXPORT_FORMAT"]

POLICIES = ("learned", "lru", "fifo", "random")
LOW_WATER = 0.9  # eviction brings the bank down to this fraction of its budget
_GATE_KEY = "gate:"
_MODEL_KEY = "retention_model"
_RECENT_TEXTS = 8  # single-text embeddings kept for reuse (see MemoryBank._embed)
_UNSET: Any = object()


def default_db_path() -> Path:
    """``$MLX_SYNAPSE_MEMORY_DB``, else ``$XDG_DATA_HOME/mlx_synapse/memory.db``
    (``~/.local/share/mlx_synapse/memory.db``)."""
    env = os.environ.get("MLX_SYNAPSE_MEMORY_DB")
    if env:
        return Path(os.path.expanduser(env))
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mlx_synapse" / "memory.db"


def default_user() -> str:
    """``$MLX_SYNAPSE_USER``, else the login name, else ``'default'``."""
    env = os.environ.get("MLX_SYNAPSE_USER")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers)
        return "default"


@dataclass(frozen=True)
class Entry:
    """One memory, as returned by the bank (vectors stay inside)."""

    id: int
    user: str
    text: str
    source: Optional[str]
    metadata: Any
    created: float
    last_access: float
    hits: int
    surprise: Optional[float]
    tier: str  # 'hot' (float16 vector), 'warm' (int8), 'cold' (text only)
    encoder: Optional[str]
    redundancy: Optional[float]

    @classmethod
    def _of(cls, row: Dict[str, Any]) -> "Entry":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class WriteResult:
    """What ``add`` did with one text: ``action`` is 'added', 'refreshed' (a near-duplicate
    of entry ``id`` existed) or 'skipped' (not surprising enough; ``id`` is None)."""

    id: Optional[int]
    action: str
    surprise: Optional[float] = None
    threshold: Optional[float] = None
    similarity: Optional[float] = None


class ScrubPending(ValueError):
    """The entries were deleted (or their text rewritten) in the database, but another
    process's open read keeps the old text in the file's bytes for now.

    ``count`` is how many entries were deleted, ``readers`` the processes holding the
    file (``'pid N (command)'`` on Linux). A pending-scrub mark in the file makes the
    next open, close or operation of a bank (or the last reader's own close) finish it.
    A ValueError, so that callers that print ValueErrors as one line report it.
    """

    def __init__(self, msg: str, count: int, readers: List[str]):
        super().__init__(msg)
        self.count, self.readers = count, readers


def _err(msg: str) -> ValueError:
    return ValueError(f"[memory.bank] {msg}")


def _check_user(user) -> str:
    try:
        return _check_str(user, "user", "", max_bytes=MAX_NAME_BYTES, nonblank=True)
    except ValueError as e:
        raise _err(str(e).split("] ", 1)[-1] + " Pass user='<name>' (one bank holds many users).") from None


def _superseded(metadata: Any) -> bool:
    """Whether an entry's metadata marks it as replaced by a newer fact."""
    return isinstance(metadata, dict) and metadata.get("superseded_by") is not None


def _as_f16(vecs) -> np.ndarray:
    return np.stack(vecs).astype("<f2").astype(np.float32)


class MemoryBank:
    """Per-user episodic memory over one SQLite file (see the module docstring).

    Args:
        path: the database file (created with mode 0600); None = :func:`default_db_path`.
        encoder: an :class:`.Encoder` (``texts -> (N, dim)`` unit rows, ``.dim``, ``.name``);
            None = all-MiniLM-L6-v2 (:class:`.MiniLMEncoder`), loaded on first use.
        budget_mb: byte budget (MiB) for texts and vectors; None = unbounded.
        surprise: a scorer ``texts -> (N,)`` mean token NLLs (e.g. :class:`.SurpriseScorer`)
            used when ``add`` is given no surprise; None = write without gating.
        gamma, warmup: the surprise gate's ``mean + gamma * std`` rule and warm-up count.
        dedup: cosine at or above which a new text refreshes an existing entry instead
            (None: always add).
        policy: which entries degrade first over budget: 'learned' (the MLP of
            :meth:`train_retention`; LRU until one has been trained), 'lru', 'fifo', 'random'.
        backend: the index's backend ('auto', 'numpy', 'mlx'), as :func:`mlx_synapse.load`.
        retrain_every: with ``policy='learned'``, a write calls :meth:`train_retention`
            when the last snapshot is at least this many seconds old (the first write
            takes the first snapshot); None = only when called.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike, None] = None,
        encoder=None,
        *,
        budget_mb: Optional[float] = None,
        surprise: Optional[Callable[[Sequence[str]], np.ndarray]] = None,
        gamma: float = 1.0,
        warmup: int = 8,
        dedup: float = 0.95,
        policy: str = "learned",
        backend: str = "auto",
        timeout: float = 30.0,
        seed: int = 0,
        retrain_every: Optional[float] = 86400.0,
    ) -> None:
        if budget_mb is not None and not (
            isinstance(budget_mb, (int, float)) and math.isfinite(budget_mb) and budget_mb > 0
        ):
            raise _err(f"budget_mb must be a positive number (MiB) or None but got {budget_mb!r}.")
        if dedup is not None and not (isinstance(dedup, (int, float)) and -1.0 <= dedup <= 1.0):
            raise _err(f"dedup must be a cosine in [-1, 1] (or None: never merge) but got {dedup!r}.")
        if policy not in POLICIES:
            raise _err(f"policy must be one of {POLICIES} but got {policy!r}.")
        SurpriseGate(gamma, warmup)  # validates both
        if retrain_every is not None and not (
            isinstance(retrain_every, (int, float)) and math.isfinite(retrain_every) and retrain_every > 0
        ):
            raise _err(f"retrain_every must be a positive number of seconds or None but got {retrain_every!r}.")
        self.retrain_every = retrain_every
        self.path = Path(os.path.expanduser(os.fspath(path))) if path is not None else default_db_path()
        self.store = MemoryStore(self.path, timeout=timeout)
        self._encoder = encoder
        # The last few single texts embedded: a chat turn searches with the message, checks
        # it against known facts and writes it, all with one encoding. Cleared by forget.
        self._recent: "OrderedDict[Tuple[str, str], np.ndarray]" = OrderedDict()
        self.budget_bytes = None if budget_mb is None else int(budget_mb * 2**20)
        self.surprise = surprise
        self.gamma, self.warmup = float(gamma), warmup
        self.dedup = math.inf if dedup is None else float(dedup)
        self.policy_name, self.backend, self.seed = policy, backend, seed
        self._indexes: Dict[str, VectorIndex] = {}
        self._bytes: Optional[int] = None
        # Uses found by search, id -> [uses, last time], kept in memory and written with the next
        # write transaction (or at close): a search is a read and must not cost a durable commit.
        self._touch: Dict[int, List[float]] = {}
        self._dv = self.store.data_version()

    # ------------------------------------------------------------------ plumbing

    @property
    def encoder(self):
        """The encoder (the default one is loaded here, on first use)."""
        if self._encoder is None:
            from .encoders import MiniLMEncoder

            self._encoder = MiniLMEncoder()
        return self._encoder

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.encoder
        key = (enc.name, texts[0]) if len(texts) == 1 else None
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key][None].copy()
        v = np.asarray(enc(list(texts)), np.float32)
        if v.shape != (len(texts), enc.dim):
            raise _err(f"encoder {enc.name!r} returned shape {v.shape}, expected {(len(texts), enc.dim)}.")
        if not np.isfinite(v).all():
            raise _err(f"encoder {enc.name!r} returned a NaN or infinite value.")
        if key is not None:
            self._recent[key] = v[0].copy()
            while len(self._recent) > _RECENT_TEXTS:
                self._recent.popitem(last=False)
        return v

    def _sync(self) -> None:
        """Drop cached indexes when another connection has committed to the file."""
        if self.store.scrub_pending:
            self.store.finish_scrub()
        dv = self.store.data_version()
        if dv != self._dv:
            self._indexes.clear()
            self._bytes = None
            self._dv = dv

    def _index(self, user: str) -> VectorIndex:
        idx = self._indexes.get(user)
        if idx is not None:
            return idx
        self._reembed_stale(user)
        enc = self.encoder
        ids, codes, scales = self.store.load_vectors(user, encoder=enc.name)
        idx = VectorIndex(enc.dim, backend=self.backend)
        if len(ids):
            if codes.shape[1] != enc.dim:
                raise _err(
                    f"entries of user {user!r} were embedded by {enc.name!r} with dim {codes.shape[1]}, "
                    f"but the encoder has dim {enc.dim}; the file is inconsistent."
                )
            idx.add(ids, codes, scales)
        self._indexes[user] = idx
        return idx

    def _reembed_stale(self, user: Optional[str]) -> int:
        """Re-embed the vectors of entries that another encoder wrote (the text is kept)."""
        name = self.encoder.name
        done = 0
        while True:
            rows = self.store.stale_vectors(user, name, limit=256)
            if not rows:
                return done
            vecs = self._embed([r[1] for r in rows])
            self.store.set_vectors([(r[0], v, name) for r, v in zip(rows, vecs)])
            done += len(rows)

    def _entry(self, row: Dict[str, Any]) -> Entry:
        """The row as an Entry, with the uses of searches not yet written counted in."""
        t = self._touch.get(row["id"])
        if t is not None:
            row = dict(row, hits=row["hits"] + int(t[0]), last_access=max(row["last_access"], t[1]))
        return Entry._of(row)

    def _take_touches(self) -> List[Tuple[int, int, float]]:
        out = [(i, int(n), when) for i, (n, when) in self._touch.items()]
        return out

    def flush(self) -> None:
        """Write the access statistics of searches (kept in memory until the next write)."""
        if self._touch:
            self.store.add_many([], touches=self._take_touches())
            self._touch.clear()
            self._dv = self.store.data_version()

    def _scrubbed(self, what: str, count: int, wait: float = 2.0) -> None:
        readers = self.store.scrub(wait)
        if readers:
            raise ScrubPending(
                f"[memory.bank] {what}, but the old text is still in the bytes of {self.path} because "
                f"{'; '.join(readers)} holds it open for reading. The scrub finishes when that reader "
                f"closes (or at this bank's next use or close); close it and run the command again.",
                count, readers,
            )

    def _gate(self, user: str) -> SurpriseGate:
        return SurpriseGate.from_state(self.store.get_meta(_GATE_KEY + user), self.gamma, self.warmup)

    # ------------------------------------------------------------------ writing

    def _check_text(self, text, where: str = "") -> str:
        try:
            return _check_str(text, "text", where, max_bytes=self.store.max_text_bytes, nonblank=True)
        except ValueError as e:
            raise _err(str(e).split("] ", 1)[-1]) from None

    def add(
        self,
        text: str,
        *,
        user: str,
        source: Optional[str] = None,
        metadata: Any = None,
        surprise: Optional[float] = None,
        force: bool = False,
        now: Optional[float] = None,
    ) -> Optional[int]:
        """Remember ``text`` for ``user``; returns the id of the new (or refreshed) entry,
        or None when the surprise gate skipped it. See :meth:`write` for the details."""
        return self.write(
            text, user=user, source=source, metadata=metadata, surprise=surprise, force=force, now=now
        ).id

    def write(self, text: str, *, user: str, source=None, metadata=None, surprise=None,
              force: bool = False, now: Optional[float] = None) -> WriteResult:
        """Like :meth:`add`, returning the whole :class:`WriteResult`."""
        item = dict(text=text, source=source, metadata=metadata, surprise=surprise, force=force)
        return self.write_many([item], user=user, now=now)[0]

    def add_many(self, items: Iterable[Union[str, Dict[str, Any]]], *, user: str,
                 now: Optional[float] = None) -> List[Optional[int]]:
        """Remember several texts in one transaction: ``items`` are strs or dicts with
        ``text`` and optional ``source``, ``metadata``, ``surprise``, ``force``. Returns
        one id (or None when skipped) per item; a near-duplicate of an earlier item of
        the same batch refreshes that one."""
        return [r.id for r in self.write_many(items, user=user, now=now)]

    def write_many(self, items: Iterable[Union[str, Dict[str, Any]]], *, user: str,
                   now: Optional[float] = None) -> List[WriteResult]:
        user = _check_user(user)
        norm = []
        for i, it in enumerate(items):
            it = {"text": it} if isinstance(it, str) else it
            if not isinstance(it, dict):
                raise _err(f"item {i}: must be a str or a dict with 'text' but got {type(it).__name__}.")
            unknown = set(it) - {"text", "source", "metadata", "surprise", "force"}
            if unknown or "text" not in it:
                raise _err(f"item {i}: needs 'text'; allowed keys are text, source, metadata, surprise, force "
                           f"(got {sorted(it)}).")
            self._check_text(it["text"], f"item {i}: ")
            s = it.get("surprise")
            if s is not None and not (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)):
                raise _err(f"item {i}: surprise must be a finite number or None but got {s!r}.")
            norm.append(it)
        if not norm:
            return []
        now = time.time() if now is None else float(now)
        vecs = self._embed([it["text"] for it in norm])
        # Surprise of the texts that need the scorer, in one call.
        need = [i for i, it in enumerate(norm) if it.get("surprise") is None]
        if need and self.surprise is not None:
            scored = np.asarray(self.surprise([norm[i]["text"] for i in need]), np.float64)
            for i, s in zip(need, scored):
                norm[i] = dict(norm[i], surprise=float(s))
        self._sync()
        idx = self._index(user)
        gate = self._gate(user)
        name = self.encoder.name
        results: List[Optional[WriteResult]] = [None] * len(norm)
        rows, row_of, refresh = [], [], []  # row_of[j] = item index of rows[j]
        keys = [statement_key(it["text"]) for it in norm]
        # The nearest stored entries of every text, in one search (the index is unchanged until the
        # batch is written); near-duplicates within the batch are checked against the rows kept so far.
        near_ids, near_scores = idx.search(vecs, min(len(idx), 4)) if len(idx) else (None, None)
        # A near-duplicate is refreshed only when it says the same thing: same words, case and
        # punctuation aside. "... is w0x1" and "... is w0x2" are close vectors but two facts.
        near_key: Dict[int, tuple] = {}
        if near_ids is not None and (near_scores >= self.dedup).any():
            cand = sorted({int(i) for i in near_ids[near_scores >= self.dedup]})
            near_key = {r["id"]: statement_key(r["text"]) for r in self.store.get_many(cand)}
        batch_key: Dict[tuple, int] = {}  # statement key -> index into rows
        for i, (it, v) in enumerate(zip(norm, vecs)):
            best_id, best = None, -2.0
            dup = None
            if near_ids is not None:
                best_id, best = int(near_ids[i, 0]), float(near_scores[i, 0])
                for nid, sc in zip(near_ids[i], near_scores[i]):
                    if sc >= self.dedup and near_key.get(int(nid)) == keys[i]:
                        dup = (int(nid), float(sc))
                        break
            if rows:  # near-duplicates within this batch
                sims = vecs[row_of] @ v
                j = int(np.argmax(sims))
                if sims[j] > best:
                    best_id, best = -1 - j, float(sims[j])
                j = batch_key.get(keys[i])
                if dup is None and j is not None and sims[j] >= self.dedup:
                    dup = (-1 - j, float(sims[j]))
            if dup is not None:
                refresh.append((i, dup[0], dup[1]))
                continue
            s = it.get("surprise")
            if s is not None:
                d = gate.decide(s)
                if not (d.write or it.get("force")):
                    results[i] = WriteResult(None, "skipped", d.surprise, d.threshold, max(best, -1.0))
                    continue
                thr = d.threshold
            else:
                thr = None
            batch_key.setdefault(keys[i], len(rows))
            rows.append(dict(
                user=user, text=it["text"], source=it.get("source"), metadata=it.get("metadata"),
                created=now, last_access=now, surprise=s, tier="hot", vector=v, encoder=name,
                redundancy=max(best, 0.0) if best > -2.0 else None, hits=0,
            ))
            row_of.append(i)
            results[i] = WriteResult(None, "added", s, thr, best if best > -2.0 else None)
        touches = self._take_touches()
        for i, target, sim in refresh:
            if target < 0:  # a text of this batch: the new row starts with the use
                rows[-1 - target]["hits"] += 1
            else:
                touches.append((target, 1, now))
        meta = {_GATE_KEY + user: gate.state()} if gate.count else None
        new_ids = self.store.add_many(rows, meta=meta, touches=touches) if rows or meta or touches else []
        self._touch.clear()
        if rows:
            # as stored ('hot': float16), so the cached index equals one loaded from the file
            idx.add_vectors(np.array(new_ids, np.int64), _as_f16([r["vector"] for r in rows]))
            for j, (i, nid) in enumerate(zip(row_of, new_ids)):
                results[i] = WriteResult(nid, "added", results[i].surprise, results[i].threshold,
                                         results[i].similarity)
            if self._bytes is not None:
                self._bytes += int(sum(entry_bytes("hot", len(r["text"].encode("utf-8")), len(r["vector"]))
                                       for r in rows))
        for i, target, sim in refresh:
            tid = new_ids[-1 - target] if target < 0 else target
            results[i] = WriteResult(tid, "refreshed", norm[i].get("surprise"), None, sim)
        self._dv = self.store.data_version()
        if rows and self.policy_name == "learned" and self.retrain_every is not None:
            t0 = self.store.get_meta("snapshot_time")
            if t0 is None or now - float(t0) >= self.retrain_every:
                self.train_retention(now=now)
        if self.budget_bytes is not None and rows:
            self._maybe_enforce(now)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ reading

    def _query_vector(self, query: Union[str, np.ndarray]) -> np.ndarray:
        """The unit query vector of a text (embedded; recent texts reuse their encoding) or a vector."""
        if isinstance(query, str):
            self._check_text(query)
            q = self._embed([query])[0]
        else:
            q = np.asarray(query, np.float32)
            if q.shape != (self.encoder.dim,):
                raise _err(f"a query vector must have shape ({self.encoder.dim},) but got {q.shape}.")
        norm = float(np.linalg.norm(q))
        if not (math.isfinite(norm) and norm > 0):
            raise _err("the query vector is zero or not finite.")
        return q / norm

    def _note_uses(self, ids: Iterable[int], when: float) -> None:
        """Count a use of these entries (written with the next write transaction)."""
        for i in ids:
            t = self._touch.setdefault(i, [0, when])
            t[0], t[1] = t[0] + 1, max(t[1], when)

    def search(
        self,
        query: Union[str, np.ndarray],
        k: int = 5,
        *,
        user: str,
        min_score: Optional[float] = None,
        touch: bool = True,
        lexical: float = 0.0,
        include_history: bool = False,
    ) -> List[Tuple[Entry, float]]:
        """The ``k`` entries of ``user`` closest to ``query`` (a text, or a vector in the
        encoder's space) by cosine, best first, as ``(Entry, score)``; only scores >=
        ``min_score`` when given. Hits count as accesses (``hits``, ``last_access``;
        written with the next write or at close) unless ``touch=False``. Cold entries
        (no vector) are not searched. The scores are the index's INT8 cosines.

        ``lexical=w > 0`` (text queries only) re-ranks a pool of at least 32 dense
        candidates by ``cosine + w * bm25 / max bm25`` (the store's FTS5 BM25 score of
        each candidate for the query's words, :func:`.retrieval.query_terms`, divided by
        the pool's best), and that sum is the score returned and compared with ``min_score``.

        Entries whose metadata has a non-null ``superseded_by`` (a fact replaced by a newer
        one) are left out unless ``include_history=True``. For fused full-text + dense
        retrieval with a second hop, see :meth:`retrieve`."""
        user = _check_user(user)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise _err(f"k must be an int >= 1 but got {k!r}.")
        if not (isinstance(lexical, (int, float)) and math.isfinite(lexical) and lexical >= 0):
            raise _err(f"lexical must be a finite number >= 0 but got {lexical!r}.")
        if lexical and not isinstance(query, str):
            raise _err("lexical re-ranking needs the query's text, not a vector.")
        q = self._query_vector(query)
        self._sync()
        idx = self._index(user)
        if not len(idx):
            return []
        # The index's cosines are the scores; rows are read only for the entries returned
        # (and, with lexical re-ranking, for the pool). Superseded entries are skipped: the
        # pool grows until k remain or the index is exhausted.
        want = max(2 * k, k + 8, 32) if lexical else k
        pool = want
        while True:
            ids, scores = idx.search(q, min(len(idx), pool), None if lexical else min_score)
            rows = {r["id"]: r for r in self.store.get_many(ids)}
            hits = []
            for i, score in zip(ids.tolist(), scores.tolist()):
                row = rows.get(i)
                if row is None or row["user"] != user or row["vector"] is None:
                    continue  # another process changed it meanwhile
                if not include_history and _superseded(row["metadata"]):
                    continue
                hits.append((self._entry(row), float(score)))
            if len(hits) >= want or len(ids) < pool or pool >= len(idx):
                break
            pool *= 4
        if lexical and hits:
            from .retrieval import query_terms

            found = dict(self.store.text_search(user, query_terms(query), len(hits),
                                                ids=[e.id for e, _ in hits]))
            top = max(found.values(), default=0.0)
            if top > 0:
                hits = [(e, s + lexical * found.get(e.id, 0.0) / top) for e, s in hits]
            hits.sort(key=lambda h: (-h[1], h[0].id))
            if min_score is not None:
                hits = [h for h in hits if h[1] >= min_score]
        hits = hits[:k]
        if touch:
            self._note_uses([e.id for e, _ in hits], time.time())
        return hits

    def retrieve(self, query: str, k: int = 10, *, user: str, include_history: bool = False, adaptive: bool = True,
                 hops: int = 1, min_score: Optional[float] = None, touch: bool = True, params=None):
        """Fused full-text (BM25) + dense retrieval with recency and a second hop for names
        found in the first hits; up to ``k`` :class:`.retrieval.Hit`, best first, fewer
        where the fused score drops sharply (``adaptive``). See :mod:`.retrieval`."""
        from .retrieval import RetrievalParams, hybrid_search

        user = _check_user(user)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise _err(f"k must be an int >= 1 but got {k!r}.")
        if not isinstance(query, str):
            raise _err(f"retrieve needs the query's text but got {type(query).__name__}; use search for a vector.")
        return hybrid_search(self, query, k, user=user, include_history=include_history, adaptive=adaptive,
                             hops=hops, min_score=min_score, touch=touch, params=params or RetrievalParams())

    def get(self, id: int, *, user: Optional[str] = None) -> Optional[Entry]:
        """Entry ``id`` (None if absent, or if it belongs to another user than ``user``)."""
        self._sync()
        row = self.store.get(id)
        if row is None or (user is not None and row["user"] != _check_user(user)):
            return None
        return self._entry(row)

    def list(self, *, user: Optional[str] = None, tier: Optional[str] = None,
             limit: Optional[int] = None) -> List[Entry]:
        """Entries (of ``user``, or all), oldest first; only those in ``tier`` if given, at
        most ``limit`` (an int >= 0) when given."""
        if user is not None:
            user = _check_user(user)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise _err(f"limit must be an int >= 0 (or None: no limit) but got {limit!r}.")
        self._sync()
        if limit == 0:
            return []
        out = []
        for row in self.store.iter_entries(user):
            if tier is None or row["tier"] == tier:
                out.append(self._entry(row))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def update(self, id: int, *, user: Optional[str] = None, text: Any = _UNSET, source: Any = _UNSET,
               metadata: Any = _UNSET) -> Entry:
        """Change an entry's text (re-embedded), source or metadata; ``KeyError`` when there
        is no entry ``id`` (of ``user``, if given). Returns the updated entry."""
        cur = self.get(id, user=user)
        if cur is None:
            raise KeyError(f"[memory.bank] no entry with id {id}" + (f" for user {user!r}." if user else "."))
        fields: Dict[str, Any] = {}
        if source is not _UNSET:
            fields["source"] = source
        if metadata is not _UNSET:
            fields["metadata"] = metadata
        vec = None
        if text is not _UNSET:
            fields["text"] = self._check_text(text)
            if cur.tier != "cold":
                vec = self._embed([text])[0]
                fields.update(vector=vec, encoder=self.encoder.name)
        self._sync()
        self.flush()
        self.store.update(id, **fields)
        if vec is not None and cur.user in self._indexes:
            self._indexes[cur.user].add_vectors(np.array([id], np.int64), _as_f16([vec]))
        self._bytes = None
        self._dv = self.store.data_version()
        if "text" in fields:  # a correction: the old text must leave the file's bytes too
            self._recent.clear()
            self._scrubbed(f"entry {id} was updated", 0)
        return self.get(id)  # type: ignore[return-value]

    # ------------------------------------------------------------------ forgetting

    def forget(self, id: Union[int, Iterable[int], None] = None, *, user: Optional[str] = None,
               where: Union[Dict[str, Any], Callable[[Entry], bool], None] = None) -> int:
        """Delete memories for good; returns how many entries were deleted.

        * ``forget(id)`` / ``forget([ids])``: those entries (only ``user``'s, if given).
        * ``forget(user=u)``: every entry of ``u``, and the bank's statistics about ``u``.
        * ``forget(user=u, where=...)``: ``u``'s entries that match ``where``: a callable
          ``Entry -> bool``, or a dict of conditions: ``source``, ``tier`` (equal),
          ``contains`` (substring of the text, case-insensitive), ``before`` / ``after``
          (``created`` earlier / later than a time in seconds since the epoch).

        Deleted text is overwritten in the file (secure_delete) and the write-ahead log
        is checkpointed and truncated, so it is not left in the file's bytes. When another
        process holds a read open on the file, that cannot finish at once: after waiting up
        to 2 s, :class:`ScrubPending` (a ValueError naming the reader) is raised, and the
        scrub completes as soon as it can (see :meth:`MemoryStore.scrub`).
        """
        if id is None and user is None:
            raise _err("forget needs an id, a list of ids, or user=... (with an optional where=...).")
        if user is not None:
            user = _check_user(user)
        self._sync()
        self.flush()
        if id is not None:
            if where is not None:
                raise _err("give either ids or where=..., not both.")
            ids = [id] if isinstance(id, (int, np.integer)) else list(id)
            if user is not None:
                ids = [e["id"] for e in self.store.get_many(ids) if e["user"] == user]
            n = self.store.delete(ids)
        elif where is None:
            n = self.store.delete_user(user)
            for key in (_GATE_KEY + user,):
                self.store.delete_meta(key)
        else:
            match = self._matcher(where)
            ids = [row["id"] for row in self.store.iter_entries(user) if match(self._entry(row))]
            n = self.store.delete(ids)
        self._indexes.clear()
        self._recent.clear()
        self._bytes = None
        self._dv = self.store.data_version()
        self._scrubbed(f"{n} entr{'y was' if n == 1 else 'ies were'} deleted", n)
        return n

    @staticmethod
    def _matcher(where) -> Callable[[Entry], bool]:
        if callable(where):
            return where
        if not isinstance(where, dict) or not where:
            raise _err("where must be a callable Entry -> bool or a non-empty dict of conditions.")
        allowed = {"source", "tier", "contains", "before", "after"}
        unknown = set(where) - allowed
        if unknown:
            raise _err(f"unknown where condition(s) {sorted(unknown)}; the conditions are {sorted(allowed)}.")
        for k in ("before", "after"):
            if k in where and not isinstance(where[k], (int, float)):
                raise _err(f"where[{k!r}] must be a time in seconds since the epoch.")
        needle = where.get("contains")
        if needle is not None and not isinstance(needle, str):
            raise _err("where['contains'] must be a str.")

        def match(e: Entry) -> bool:
            return (
                ("source" not in where or e.source == where["source"])
                and ("tier" not in where or e.tier == where["tier"])
                and (needle is None or needle.casefold() in e.text.casefold())
                and ("before" not in where or e.created < where["before"])
                and ("after" not in where or e.created > where["after"])
            )

        return match

    # ------------------------------------------------------------------ budget

    def _total_bytes(self, st: Dict[str, np.ndarray]) -> int:
        return int(entries_bytes(list(st["tier"]), st["text_bytes"], st["dim"]).sum())

    def _policy(self):
        if self.policy_name == "fifo":
            return FIFOPolicy()
        if self.policy_name == "lru":
            return LRUPolicy()
        if self.policy_name == "random":
            return RandomPolicy(self.seed)
        state = self.store.get_meta(_MODEL_KEY)
        return LRUPolicy() if state is None else LearnedPolicy.from_dict(state)

    @staticmethod
    def _entry_stats(st: Dict[str, np.ndarray], snapshot: bool = False) -> EntryStats:
        return EntryStats(
            ids=st["ids"], created=st["created"],
            last_access=st["snap_access"] if snapshot else st["last_access"],
            hits=st["snap_hits"] if snapshot else st["hits"],
            surprise=st["surprise"], redundancy=st["redundancy"],
        )

    def _maybe_enforce(self, now: float) -> None:
        if self._bytes is None:
            self._bytes = self._total_bytes(self.store.stats())
        if self._bytes > self.budget_bytes:  # type: ignore[operator]
            self.enforce_budget(now=now)

    def enforce_budget(self, budget_bytes: Optional[int] = None, *, now: Optional[float] = None
                       ) -> List[Tuple[int, Optional[str]]]:
        """Degrade entries until the bank's bytes fit: to ``budget_bytes`` when given,
        else (when over ``budget_mb``) to 90% of it. Returns the moves applied,
        ``(id, new tier or None for evicted)``, in order."""
        if budget_bytes is None:
            if self.budget_bytes is None:
                return []
        elif isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise _err(f"budget_bytes must be an int >= 0 but got {budget_bytes!r}.")
        now = time.time() if now is None else float(now)
        self._sync()
        self.flush()
        st = self.store.stats()
        total = self._total_bytes(st)
        if budget_bytes is None:
            if total <= self.budget_bytes:
                self._bytes = total
                return []
            budget_bytes = int(self.budget_bytes * LOW_WATER)
        if total <= budget_bytes or not len(st["ids"]):
            self._bytes = total
            return []
        scores = self._policy().scores(self._entry_stats(st), now)
        moves = plan_degradation(st["ids"], list(st["tier"]), st["text_bytes"], st["dim"], scores, budget_bytes)
        self.store.apply_moves(moves)
        self._indexes.clear()
        self._bytes = None
        self.store.scrub(wait=0)  # evicted text leaves the bytes now, or at the next chance
        self._dv = self.store.data_version()
        return moves

    def train_retention(self, *, now: Optional[float] = None, min_examples: int = 20,
                        epochs: int = 100) -> Dict[str, Any]:
        """Fit the learned retention policy on the bank's own access statistics.

        The labels come from the last snapshot (:meth:`MemoryStore.take_snapshot`):
        features as of then (age, idle time, hits, surprise, redundancy), label = the
        entry was retrieved since (entries added since count from when they were
        added). Then a new snapshot starts the next window. The
        first call only takes the snapshot. Returns what happened (``trained``,
        ``examples``, ``positives``, ``reason``).
        """
        now = time.time() if now is None else float(now)
        self.flush()
        t0 = self.store.get_meta("snapshot_time")
        report: Dict[str, Any] = {"trained": False, "examples": 0, "positives": 0}
        if t0 is None:
            report["reason"] = "no snapshot yet; took one, train again after some use"
        else:
            st = self.store.stats()
            # Entries added since the snapshot enter the window as they were when added.
            new = (st["snap_hits"] < 0) & (st["created"] > float(t0))
            st["snap_hits"][new] = 0
            st["snap_access"][new] = st["created"][new]
            keep = st["snap_hits"] >= 0
            sub = {k: v[keep] for k, v in st.items()}
            labels = sub["hits"] > sub["snap_hits"]
            report.update(examples=int(keep.sum()), positives=int(labels.sum()))
            if keep.sum() < min_examples or labels.all() or not labels.any():
                report["reason"] = (f"need >= {min_examples} entries from before the snapshot with both "
                                    f"accessed and unaccessed ones")
            else:
                model = LearnedPolicy(seed=self.seed).fit(self._entry_stats(sub, snapshot=True), labels,
                                                         float(t0), epochs=epochs)
                self.store.set_meta(_MODEL_KEY, model.to_dict())
                report["trained"] = True
        self.store.take_snapshot(now)
        self._dv = self.store.data_version()
        return report

    # ------------------------------------------------------------------ import / export

    def export(self, path: Union[str, os.PathLike], *, user: Optional[str] = None) -> int:
        """Write the entries (of ``user``, or all) to a JSON Lines file (mode 0600,
        replaced atomically): a header line ``{"format", "exported"}`` and one line per
        entry with its encoder's name and vector (base64 float16, or int8 + scale).
        Returns the count. See :mod:`.transfer`."""
        return transfer.export(self, path, user=user)

    def import_(self, path: Union[str, os.PathLike], *, user: Optional[str] = None) -> int:
        """Add the entries of an :meth:`export` file (to ``user`` if given, else each to its
        own). The whole file is checked first and written in one transaction: a bad line
        raises ValueError naming it, and nothing is imported. Vectors are kept when the file's
        encoder is this bank's (finite, not all zeros, scales within float32), else
        re-embedded from the texts; entries whose text the user already has are skipped.
        Returns how many entries were added. See :mod:`.transfer`."""
        return transfer.import_(self, path, user=user)

    # ------------------------------------------------------------------ facts

    def stats(self) -> Dict[str, Any]:
        """Counts per user and tier, bytes against the budget, the encoder, the policy,
        and the file's size on disk."""
        self._sync()
        st = self.store.stats()
        users: Dict[str, int] = {}
        for u in st["user"]:
            users[u] = users.get(u, 0) + 1
        tiers = {t: int((st["tier"] == t).sum()) for t in ("hot", "warm", "cold")}
        size = sum(os.path.getsize(f"{self.path}{s}") for s in ("", "-wal") if os.path.exists(f"{self.path}{s}"))
        enc = self._encoder
        return {
            "path": str(self.path),
            "entries": int(len(st["ids"])),
            "users": users,
            "tiers": tiers,
            "bytes": self._total_bytes(st),
            "budget_bytes": self.budget_bytes,
            "file_bytes": size,
            "encoder": getattr(enc, "name", None),
            "policy": self.policy_name + ("" if self.policy_name != "learned" or self.store.get_meta(_MODEL_KEY)
                                          else " (untrained: LRU)"),
            "hits": (int(st["hits"].sum()) if len(st["ids"]) else 0) + int(sum(t[0] for t in self._touch.values())),
        }

    def close(self) -> None:
        """Write the pending access statistics and close the file (idempotent)."""
        if self.store._db is not None:
            try:
                self.flush()
            except ValueError:  # a read-only file keeps its old statistics
                self._touch.clear()
        self.store.close()

    def __enter__(self) -> "MemoryBank":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryBank({str(self.path)!r}, encoder={getattr(self._encoder, 'name', None)!r})"
