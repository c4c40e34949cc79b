"""Retention policies and the byte-budget degradation plan of the memory bank.

Over its byte budget the bank degrades entries one tier at a time,
``'hot'`` (float16 vector) -> ``'warm'`` (int8 vector) -> ``'cold'`` (text only,
not searchable) -> evicted. Which entries go first is decided by a retention
score, higher = keep longer, from a :class:`RetentionPolicy`:

* :class:`FIFOPolicy` (score = ``created``), :class:`LRUPolicy` (``last_access``),
  :class:`RandomPolicy` (seeded) — baselines;
* :class:`LearnedPolicy` — a small MLP over the bank's own access statistics
  (:data:`FEATURE_NAMES`), trained to predict whether an entry will be retrieved
  in the next window, NumPy forward and Adam training.

:func:`plan_degradation` turns scores and a budget into the list of tier moves.
Pure NumPy; the bank stores a fitted policy in its meta table via
:meth:`LearnedPolicy.to_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "ENTRY_OVERHEAD", "FEATURE_NAMES", "SURPRISE_NEUTRAL", "TIERS", "EntryStats", "FIFOPolicy",
    "LRUPolicy", "LearnedPolicy", "RandomPolicy", "RetentionPolicy", "entries_bytes",
    "entry_bytes", "features", "plan_degradation", "redundancy",
]

# The five statistics of the brief, plus a flag that tells a known surprise of
# exactly SURPRISE_NEUTRAL from an unknown one (NaN, mapped to that neutral value).
FEATURE_NAMES = ("age", "idle", "hits", "surprise", "redundancy", "surprise_known")
TIERS = ("hot", "warm", "cold")  # the same strings as mlx_synapse.memory.store.TIERS
ENTRY_OVERHEAD = 64  # bytes of row bookkeeping per entry (ids, times, counters, tier, scale)
SURPRISE_NEUTRAL = 4.0  # nats: the middle of a small LM's usual 1-8 mean token NLL
_HOUR = 3600.0


def _err(msg: str) -> ValueError:
    return ValueError(f"[memory.policy] {msg}")


def _column(value, name: str, kind: str, dtype) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim != 1:
        raise _err(f"EntryStats.{name} must be a 1-D array but got shape {a.shape}.")
    if a.size and a.dtype.kind not in kind:
        want = "an integer" if kind == "iu" else "a real"
        raise _err(f"EntryStats.{name} must be {want} array but got dtype {a.dtype}.")
    return a.astype(dtype)


@dataclass
class EntryStats:
    """Access statistics of ``N`` entries, one row per entry (arrays of length ``N``).

    Args:
        ids: int64 entry ids (unique).
        created: float64 seconds since the epoch.
        last_access: float64 seconds since the epoch (``created`` if never retrieved).
        hits: int64 >= 0, times retrieved.
        surprise: float32 mean token NLL of the text under the LM in nats, NaN when unknown.
        redundancy: float32 in [-1, 1], max cosine to another entry of the same user
            (0 if none or unknown); see :func:`redundancy`.

    Columns are converted to those dtypes; a wrong shape, kind or length, a
    non-finite time, negative hits, duplicate ids or a redundancy outside [-1, 1]
    raise ``ValueError``.
    """

    ids: np.ndarray
    created: np.ndarray
    last_access: np.ndarray
    hits: np.ndarray
    surprise: np.ndarray
    redundancy: np.ndarray

    def __post_init__(self):
        self.ids = _column(self.ids, "ids", "iu", np.int64)
        self.created = _column(self.created, "created", "iuf", np.float64)
        self.last_access = _column(self.last_access, "last_access", "iuf", np.float64)
        self.hits = _column(self.hits, "hits", "iu", np.int64)
        self.surprise = _column(self.surprise, "surprise", "iuf", np.float32)
        self.redundancy = _column(self.redundancy, "redundancy", "iuf", np.float32)
        n = len(self.ids)
        for name in ("created", "last_access", "hits", "surprise", "redundancy"):
            if len(getattr(self, name)) != n:
                raise _err(f"EntryStats.{name} has {len(getattr(self, name))} rows but ids has {n}; "
                           f"every column needs one row per entry.")
        for name in ("created", "last_access"):
            if not np.isfinite(getattr(self, name)).all():
                raise _err(f"EntryStats.{name} has a NaN or infinite time; pass seconds since the epoch.")
        if (self.hits < 0).any():
            raise _err(f"EntryStats.hits must be >= 0 but got {int(self.hits.min())}.")
        if np.isinf(self.surprise).any():
            raise _err("EntryStats.surprise has an infinite value; use NaN for unknown.")
        r = self.redundancy
        if not np.isfinite(r).all() or (np.abs(r) > 1.001).any():
            bad = r[~(np.isfinite(r) & (np.abs(r) <= 1.001))][0]
            raise _err(f"EntryStats.redundancy must be a cosine in [-1, 1] (0 if unknown) but got {bad}.")
        self.redundancy = np.clip(r, -1.0, 1.0)  # float rounding of cosines may pass 1 by an ulp
        if len(np.unique(self.ids)) != n:
            raise _err("EntryStats.ids has duplicates; each row must be a distinct entry.")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index) -> EntryStats:
        """The rows at ``index`` (integer indices or a boolean mask)."""
        return EntryStats(*(getattr(self, f)[index] for f in
                            ("ids", "created", "last_access", "hits", "surprise", "redundancy")))


def _check_now(now) -> float:
    now = float(now)
    if not np.isfinite(now):
        raise _err(f"now must be a finite time in seconds since the epoch but got {now}.")
    return now


def features(stats: EntryStats, now: float) -> np.ndarray:
    """The MLP's inputs, ``(N, len(FEATURE_NAMES))`` float32, columns as :data:`FEATURE_NAMES`.

    ``age``/``idle`` are ``log1p`` of hours since ``created``/``last_access`` (times in
    the future count as 0), ``hits`` is ``log1p(hits)``, ``surprise`` is
    ``(nll - 4) / 2`` clipped to [-3, 3] with unknown (NaN) mapped to 0 and
    ``surprise_known`` = 0, ``redundancy`` is the cosine as given.
    """
    if not isinstance(stats, EntryStats):
        raise _err(f"features needs an EntryStats but got {type(stats).__name__}.")
    now = _check_now(now)
    known = np.isfinite(stats.surprise)
    s = np.where(known, (stats.surprise.astype(np.float64) - SURPRISE_NEUTRAL) / 2.0, 0.0)
    cols = (
        np.log1p(np.maximum(now - stats.created, 0.0) / _HOUR),
        np.log1p(np.maximum(now - stats.last_access, 0.0) / _HOUR),
        np.log1p(stats.hits.astype(np.float64)),
        np.clip(s, -3.0, 3.0),
        stats.redundancy.astype(np.float64),
        known.astype(np.float64),
    )
    return np.stack(cols, axis=1).astype(np.float32)  # (N, F)


class RetentionPolicy(Protocol):
    """Scores entries for retention: higher = keep longer."""

    name: str

    def scores(self, stats: EntryStats, now: float) -> np.ndarray:  # float64 (N,)
        ...


class FIFOPolicy:
    """First in, first out: the oldest entries degrade first (score = ``created``)."""

    name = "fifo"

    def scores(self, stats: EntryStats, now: float) -> np.ndarray:
        return stats.created.astype(np.float64)


class LRUPolicy:
    """Least recently used degrades first (score = ``last_access``)."""

    name = "lru"

    def scores(self, stats: EntryStats, now: float) -> np.ndarray:
        return stats.last_access.astype(np.float64)


class RandomPolicy:
    """Uniform random scores; each call draws afresh from one generator seeded once."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def scores(self, stats: EntryStats, now: float) -> np.ndarray:
        return self._rng.random(len(stats))


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


_PARAMS = ("W1", "b1", "W2", "b2", "W3", "b3")


class LearnedPolicy:
    """MLP ``F -> hidden -> hidden -> 1`` (tanh) predicting future retrieval of an entry.

    ``fit`` learns from one snapshot of the bank: the features of each entry as of
    ``now`` and whether it was retrieved in the window after ``now``. ``scores`` is
    the logit of that probability (a logit, not a probability, so that confident
    predictions do not tie at 1.0). An unfitted policy raises ``ValueError`` from
    ``scores``; it never falls back silently (the bank can use :class:`LRUPolicy`).
    """

    name = "learned"

    def __init__(self, hidden: int = 32, seed: int = 0):
        if int(hidden) != hidden or hidden < 1:
            raise _err(f"LearnedPolicy hidden must be a positive integer but got {hidden!r}.")
        self.hidden, self.seed = int(hidden), int(seed)
        self.params: dict | None = None
        self.mu = self.sigma = None  # input standardisation, from the training features

    @property
    def fitted(self) -> bool:
        return self.params is not None

    @property
    def n_params(self) -> int:
        f, h = len(FEATURE_NAMES), self.hidden
        return f * h + h + h * h + h + h + 1

    def _init(self, rng) -> dict:
        f, h = len(FEATURE_NAMES), self.hidden
        return {"W1": rng.normal(0, 1 / np.sqrt(f), (f, h)), "b1": np.zeros(h),
                "W2": rng.normal(0, 1 / np.sqrt(h), (h, h)), "b2": np.zeros(h),
                "W3": rng.normal(0, 1 / np.sqrt(h), (h, 1)), "b3": np.zeros(1)}

    def _forward(self, x, p):
        h1 = np.tanh(x @ p["W1"] + p["b1"])  # (N, H)
        h2 = np.tanh(h1 @ p["W2"] + p["b2"])  # (N, H)
        return (h2 @ p["W3"] + p["b3"])[:, 0], (h1, h2)  # logits (N,)

    def fit(self, stats: EntryStats, accessed, now: float, *, epochs: int = 100, lr: float = 1e-2,
            weight_decay: float = 1e-4, batch_size: int | None = 512) -> LearnedPolicy:
        """Train on one snapshot; deterministic given ``seed``.

        Args:
            stats: the entries as of time ``now``.
            accessed: bool ``(N,)``, whether each entry was retrieved in the window after ``now``.
            now: the snapshot time (seconds since the epoch).
            epochs: passes over the data. lr: Adam step size. weight_decay: decoupled (AdamW)
                decay of the weight matrices. batch_size: rows per step (None = all).

        Loss: logistic, with the classes weighted to equal total weight so that a
        rare positive class is not ignored. Needs both classes present.
        """
        x = features(stats, now).astype(np.float64)
        y = np.asarray(accessed)
        if y.shape != (len(stats),) or y.dtype != np.bool_:
            raise _err(f"fit: accessed must be a bool array of shape ({len(stats)},) but got "
                       f"{y.dtype} {y.shape}.")
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == len(y):
            raise _err(f"fit needs both accessed and not-accessed entries but got {n_pos} of {len(y)} "
                       f"accessed; use a longer or shorter window.")
        if epochs < 1 or lr <= 0 or weight_decay < 0 or (batch_size is not None and batch_size < 1):
            raise _err(f"fit: need epochs >= 1, lr > 0, weight_decay >= 0, batch_size >= 1 or None; got "
                       f"epochs={epochs}, lr={lr}, weight_decay={weight_decay}, batch_size={batch_size}.")
        self.mu = x.mean(axis=0)
        sd = x.std(axis=0)
        self.sigma = np.where(sd > 1e-6, sd, 1.0)
        x = (x - self.mu) / self.sigma
        y = y.astype(np.float64)
        w = np.where(y > 0, 0.5 * len(y) / n_pos, 0.5 * len(y) / (len(y) - n_pos))  # mean 1

        rng = np.random.default_rng(self.seed)
        p = self._init(rng)
        m = {k: np.zeros_like(v) for k, v in p.items()}
        v2 = {k: np.zeros_like(v) for k, v in p.items()}
        b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
        bs = len(y) if batch_size is None else min(int(batch_size), len(y))
        for _ in range(int(epochs)):
            order = rng.permutation(len(y))
            for start in range(0, len(y), bs):
                i = order[start:start + bs]
                grads = self._grads(x[i], y[i], w[i], p)
                t += 1
                for k in _PARAMS:
                    m[k] = b1 * m[k] + (1 - b1) * grads[k]
                    v2[k] = b2 * v2[k] + (1 - b2) * grads[k] ** 2
                    step = lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v2[k] / (1 - b2 ** t)) + eps)
                    if k.startswith("W"):
                        step = step + lr * weight_decay * p[k]
                    p[k] = p[k] - step
        self.params = p
        return self

    def _grads(self, x, y, w, p) -> dict:
        z, (h1, h2) = self._forward(x, p)
        # d/dz of the weighted mean logistic loss  w * (softplus(z) - y z)
        dz = (w * (_sigmoid(z) - y) / len(y))[:, None]  # (B, 1)
        g = {"W3": h2.T @ dz, "b3": dz.sum(0)}
        d2 = (dz @ p["W3"].T) * (1 - h2 ** 2)  # (B, H)
        g["W2"], g["b2"] = h1.T @ d2, d2.sum(0)
        d1 = (d2 @ p["W2"].T) * (1 - h1 ** 2)  # (B, H)
        g["W1"], g["b1"] = x.T @ d1, d1.sum(0)
        return g

    def scores(self, stats: EntryStats, now: float) -> np.ndarray:
        """The logit of the predicted probability of retrieval in the next window, float64 (N,)."""
        if not self.fitted:
            raise _err("LearnedPolicy.scores: the policy is not fitted; call fit(stats, accessed, now) "
                       "or load one with LearnedPolicy.from_dict, or use LRUPolicy until there is data.")
        x = (features(stats, now).astype(np.float64) - self.mu) / self.sigma
        return self._forward(x, self.params)[0]

    def predict_proba(self, stats: EntryStats, now: float) -> np.ndarray:
        return _sigmoid(self.scores(stats, now))

    def to_dict(self) -> dict:
        """JSON-safe state (lists of floats; float64 round-trips exactly through ``json``)."""
        if not self.fitted:
            raise _err("LearnedPolicy.to_dict: the policy is not fitted; nothing to save.")
        return {"kind": "mlp", "version": 1, "features": list(FEATURE_NAMES), "hidden": self.hidden,
                "seed": self.seed, "mu": self.mu.tolist(), "sigma": self.sigma.tolist(),
                "params": {k: self.params[k].tolist() for k in _PARAMS}}

    @classmethod
    def from_dict(cls, d: dict) -> LearnedPolicy:
        if not isinstance(d, dict) or d.get("kind") != "mlp" or d.get("version") != 1:
            raise _err("LearnedPolicy.from_dict needs a dict made by LearnedPolicy.to_dict "
                       "(kind 'mlp', version 1).")
        if tuple(d.get("features", ())) != FEATURE_NAMES:
            raise _err(f"LearnedPolicy.from_dict: saved features {d.get('features')} differ from "
                       f"{list(FEATURE_NAMES)}; refit the policy on the bank's statistics.")
        for key in ("hidden", "mu", "sigma", "params"):
            if key not in d or (key == "params" and not set(_PARAMS) <= set(d[key])):
                raise _err(f"LearnedPolicy.from_dict: the dict is missing {key!r}; save with to_dict.")
        pol = cls(hidden=d["hidden"], seed=d.get("seed", 0))
        ref = pol._init(np.random.default_rng(0))
        params = {k: np.asarray(d["params"][k], dtype=np.float64) for k in _PARAMS}
        for k in _PARAMS:
            if params[k].shape != ref[k].shape:
                raise _err(f"LearnedPolicy.from_dict: {k} has shape {params[k].shape}, expected "
                           f"{ref[k].shape} for hidden={pol.hidden}.")
        pol.params = params
        pol.mu = np.asarray(d["mu"], dtype=np.float64)
        pol.sigma = np.asarray(d["sigma"], dtype=np.float64)
        return pol


# ---- bytes and the degradation plan -------------------------------------------------------

_RANK = {"hot": 3, "warm": 2, "cold": 1, None: 0}
_NEXT = {"hot": "warm", "warm": "cold", "cold": None}


def entry_bytes(tier: str | None, text_bytes: int, dim: int) -> int:
    """Bytes one entry costs in ``tier``: hot ``text + 2*dim``, warm ``text + dim + 4`` (int8 codes
    and a float32 scale), cold ``text``, each plus :data:`ENTRY_OVERHEAD`; evicted (``None``) 0."""
    if tier is None:
        return 0
    if tier not in _NEXT:
        raise _err(f"tier must be one of {TIERS} (or None for evicted) but got {tier!r}.")
    if text_bytes < 0 or dim < 0:
        raise _err(f"text_bytes and dim must be >= 0 but got {text_bytes} and {dim}.")
    vec = {"hot": 2 * dim, "warm": dim + 4, "cold": 0}[tier]
    return int(text_bytes) + vec + ENTRY_OVERHEAD


def entries_bytes(tiers: Sequence, text_bytes, dims) -> np.ndarray:
    """Vectorised :func:`entry_bytes`: int64 ``(N,)`` for tier strings (or None) and arrays."""
    rank = _ranks(tiers)
    text = np.asarray(text_bytes, dtype=np.int64)
    dim = np.broadcast_to(np.asarray(dims, dtype=np.int64), rank.shape)
    vec = np.select([rank == 3, rank == 2], [2 * dim, dim + 4], 0)
    return np.where(rank > 0, text + vec + ENTRY_OVERHEAD, 0).astype(np.int64)


def _ranks(tiers) -> np.ndarray:
    try:
        return np.array([_RANK[t] for t in tiers], dtype=np.int64)
    except (KeyError, TypeError):
        bad = next(t for t in tiers if not isinstance(t, (str, type(None))) or t not in _RANK)
        raise _err(f"tier must be one of {TIERS} (or None for evicted) but got {bad!r}.") from None


def plan_degradation(ids, tiers, text_bytes, dims, scores, budget_bytes
                     ) -> list[tuple[int, str | None]]:
    """The tier moves that bring the entries' total :func:`entry_bytes` within ``budget_bytes``.

    Rule ("warm everything first, then drop the least valuable entries whole"):

    1. Order entries by ascending ``(score, id)`` (ties: lower id first).
    2. Pass 1: in that order, each ``'hot'`` entry moves to ``'warm'``; stop as soon as
       the total is within budget. (An int8 vector is still searchable, so this
       pass costs retrieval almost nothing.)
    3. Pass 2: in that order, each remaining entry walks down one tier per move,
       ``'warm'`` -> ``'cold'`` -> evicted (``'cold'`` -> evicted), finishing one entry
       before the next; stop as soon as the total is within budget.

    A cold entry is not searchable but still costs its text, so pass 2 would rather
    evict the lowest-scored entries than turn many better ones cold; at most one
    entry (the last one touched) ends ``'cold'`` by this plan.

    Guarantees: the total after the moves is ``<= budget_bytes``; no move when already
    within budget; each move lowers one entry by exactly one tier; pass 2 starts only
    if every hot entry was warmed; and in ``(score, id)`` order the final tiers are
    "evicted entries form a prefix, then at most one entry that pass 2 left cold, then
    entries pass 2 did not touch", and among entries that started hot, those warmed
    by pass 1 form a prefix.

    Args:
        ids: int (N,) entry ids. tiers: N of ``'hot'``/``'warm'``/``'cold'``.
        text_bytes: int (N,). dims: int or int (N,) vector dimensions.
        scores: float (N,), higher = keep longer (a policy's ``scores``). budget_bytes: >= 0.

    Returns:
        ``[(id, new_tier), ...]`` in the order to apply; ``new_tier`` None = evict.
    """
    ids = np.asarray(ids)
    n = len(ids)
    if budget_bytes < 0:
        raise _err(f"budget_bytes must be >= 0 but got {budget_bytes}.")
    if ids.ndim != 1 or (n and ids.dtype.kind not in "iu"):
        raise _err(f"ids must be a 1-D integer array but got {ids.dtype} {ids.shape}.")
    scores = np.asarray(scores, dtype=np.float64)
    text = np.asarray(text_bytes, dtype=np.int64)
    tiers = list(tiers)
    for name, a in (("tiers", tiers), ("text_bytes", text), ("scores", scores)):
        if len(a) != n:
            raise _err(f"{name} has {len(a)} rows but ids has {n}; pass one per entry.")
    if np.isnan(scores).any():
        raise _err("scores has NaN; a policy must score every entry.")
    dims = np.asarray(dims, dtype=np.int64)
    if dims.ndim > 1 or (dims.ndim == 1 and len(dims) != n):
        raise _err(f"dims has {len(dims)} rows but ids has {n}; pass one int or one per entry.")
    if (text < 0).any() or (dims < 0).any():
        raise _err("text_bytes and dims must be >= 0.")
    rank = _ranks(tiers)
    if (rank == 0).any():
        raise _err("tiers has None (already evicted); pass only entries still in the bank.")
    cost = entries_bytes(tiers, text, dims)
    dim = np.broadcast_to(dims, (n,))
    excess = int(cost.sum()) - int(budget_bytes)
    if excess <= 0:
        return []
    order = np.lexsort((ids, scores))  # ascending score, then id

    # Pass 1: hot -> warm, each saving dim - 4 bytes.
    hot = order[rank[order] == 3]
    k = _first_enough(dim[hot] - 4, excess)
    moves = [(int(ids[i]), "warm") for i in hot[:k]]
    if k < len(hot) or (k and int((dim[hot] - 4).sum()) >= excess):
        return moves
    excess -= int((dim[hot] - 4).sum())
    rank = rank.copy()
    rank[hot] = 2

    # Pass 2: per entry, warm -> cold (saves dim + 4), then cold -> evicted (saves text + overhead).
    warm = rank[order] == 2
    n_moves = 1 + warm
    seq_i = np.repeat(order, n_moves)  # (M,)
    first = np.r_[0, np.cumsum(n_moves)[:-1]]
    to_cold = np.zeros(len(seq_i), bool)
    to_cold[first[warm]] = True
    save = np.where(to_cold, dim[seq_i] + 4, text[seq_i] + ENTRY_OVERHEAD)
    k = _first_enough(save, excess)
    return moves + [(int(ids[i]), "cold" if c else None) for i, c in zip(seq_i[:k], to_cold[:k])]


def _first_enough(save: np.ndarray, excess: int) -> int:
    """Length of the shortest prefix of ``save`` whose sum reaches ``excess`` (all if none does)."""
    if len(save) == 0:
        return 0
    hit = np.cumsum(save.astype(np.int64)) >= excess
    return int(np.argmax(hit)) + 1 if hit.any() else len(save)


def redundancy(vectors, groups=None, *, chunk: int = 2048) -> np.ndarray:
    """Max cosine of each row to another row of the same group (0 if it has none), float32 (N,).

    Args:
        vectors: float (N, D); rows need not be unit-norm (zero rows give 0).
        groups: optional (N,) labels, e.g. user ids; None = one group.
    """
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise _err(f"redundancy needs an (N, D) array but got shape {v.shape}.")
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norm > 0, norm, 1.0)
    g = None if groups is None else np.asarray(groups)
    out = np.zeros(len(v), np.float32)
    for s in range(0, len(v), chunk):
        sim = v[s:s + chunk] @ v.T  # (C, N)
        rows = np.arange(s, min(s + chunk, len(v)))
        sim[rows - s, rows] = -np.inf
        if g is not None:
            sim[g[rows][:, None] != g[None, :]] = -np.inf
        best = sim.max(axis=1) if sim.shape[1] else np.full(len(rows), -np.inf)
        out[rows] = np.where(np.isfinite(best), best, 0.0)
    return np.clip(out, -1.0, 1.0)
