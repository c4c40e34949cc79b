"""Retention under forced eviction: how many later-queried memories stay retrievable, per policy.

Usage::

    python -m mlx_synapse.benchmarks.memory_bench --entries 5000 --evict 0.9 --seeds 0 1 2 3 4
    python -m mlx_synapse.benchmarks.memory_bench --entries 2000 --dim 64 --json out.json
    python -m mlx_synapse.benchmarks.memory_bench --through-bank   # the same, through MemoryBank

``--through-bank`` replays the history through :class:`MemoryBank` itself (SQLite
file, INT8 index, ``train_retention`` snapshots, ``enforce_budget``, ``search``);
FIFO, LRU and random give exactly the simulation's numbers there (tested).

A simulated personal assistant's bank lives through three phases. Time is real
seconds; entries arrive uniformly over ``[0, t1]``, ``t0 = 0.75 t1``.

1. ``[0, t0]``: entries are added and queried; every query credits one entry
   (``hits += 1``, ``last_access = t``). At ``t0`` the bank's statistics are snapshot.
2. ``(t0, t1]``: the same process goes on. :class:`LearnedPolicy` is trained on the
   ``t0`` snapshot with label "retrieved in ``(t0, t1]``" — the bank's own statistics
   only, never the latent importance.
3. At ``t1`` each policy scores the entries from the ``t1`` statistics and
   :func:`plan_degradation` forces the bank down to ``(1 - evict)`` of its bytes
   (all entries start hot). Queries in ``(t1, t1 + test_days]`` then measure
   retrievability: a query is served if a surviving hot/warm entry of the queried
   fact is among the top ``k`` of a brute-force cosine search over the surviving
   hot (float16) and warm (int8) vectors.

Workload assumptions (chosen before any policy was run, not tuned to a result):

* Facts have a latent importance ``z ~ N(0, 1)``, query weight ``w = exp(1.5 z)``
  (heavy-tailed, Zipf-like: a few facts draw most queries).
* A fact born at ``b`` is queried as a Poisson process of rate
  ``query_rate * w / E[w] * (1 + (t - b) / 7 days) ** -1`` — recent facts are asked
  about more (power-law forgetting), so recency carries signal and LRU/FIFO are
  serious baselines. Each such query starts a burst: a geometric number (mean
  ``burst_mean``) of follow-up queries of the same fact within hours.
* 25% of new entries are paraphrases of an existing fact, chosen in proportion to
  its current query rate (people restate what matters and is on their mind);
  the rest are new facts.
* Vectors: a random unit centre per fact; an entry is the centre plus isotropic
  noise of relative norm 0.35 (paraphrases cos ~0.89), a query plus noise 0.8.
  A query credits the existing entry of its fact nearest to it (the one the
  assistant would use); any surviving entry of the fact can serve it later.
* Surprise (mean NLL, nats) = ``3.5 + 0.6 z + N(0, 1)`` clipped to [1, 8]
  (correlation ~0.5 with importance: surprising events are more memorable, the
  EM-LLM premise); unknown (NaN) for 10% of entries. Redundancy = max cosine to
  another entry of the bank at the snapshot time.
* Text is ~100 bytes (log-normal, 16-2000); :func:`entry_bytes` prices the tiers.

With these vectors a fact's own entries are far nearer its queries than any
other fact's (cos ~0.7 against at most ~0.45 in 64 dimensions), so retrieval
without eviction is ~100% and the measure is, in effect, whether a searchable
copy of the fact survived the eviction.

The headline metric is the fraction of the distinct facts queried in phase 3
whose first phase-3 query is served ("later-queried entries still retrievable");
the fraction of all phase-3 queries served is shown beside it. Exit status 1 if
the learned policy's mean does not beat both FIFO's and LRU's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# The matrices here are small: on a shared 2-core machine BLAS threads only contend
# (10x slower MLP training measured). Effective only if NumPy is not yet imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from mlx_synapse.memory.int8 import dequantize, quantize
from mlx_synapse.memory.policy import (
    EntryStats,
    FIFOPolicy,
    LearnedPolicy,
    LRUPolicy,
    RandomPolicy,
    entries_bytes,
    plan_degradation,
    redundancy,
)

DAY = 86400.0
EPOCH = 1.7e9  # simulated clock starts here (seconds since the epoch)
POLICIES = ("fifo", "lru", "random", "learned")


@dataclass
class Workload:
    entries: int = 5000
    dim: int = 64
    days: float = 240.0  # t1: phases 1 + 2
    t0_frac: float = 0.75
    test_days: float = 30.0  # phase 3
    query_rate: float = 0.1  # queries/day of an average-importance fact at birth
    recency_days: float = 7.0
    importance_sigma: float = 1.5
    burst_mean: float = 0.5
    dup_prob: float = 0.25
    entry_noise: float = 0.35
    query_noise: float = 0.8
    surprise_corr: float = 0.6
    surprise_unknown: float = 0.1
    k: int = 5
    evict: float = 0.9


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def generate(wl: Workload, seed: int) -> dict:
    """One bank history: entries (fact, created, vector, text bytes, surprise) and queries (t, fact, vector)."""
    rng = np.random.default_rng(seed)
    t1 = wl.days * DAY
    z_scale = np.exp(wl.importance_sigma ** 2 / 2)  # E[w]
    created = np.sort(rng.uniform(0.0, t1, wl.entries))
    fact = np.empty(wl.entries, np.int64)
    born, z = [], []  # per fact
    for i, t in enumerate(created):
        if born and rng.random() < wl.dup_prob:
            b, zz = np.asarray(born), np.asarray(z)
            rate = np.exp(wl.importance_sigma * zz) / (1 + (t - b) / (wl.recency_days * DAY))
            fact[i] = rng.choice(len(b), p=rate / rate.sum())
        else:
            fact[i] = len(born)
            born.append(t)
            z.append(rng.standard_normal())
    born, z = np.asarray(born), np.asarray(z)
    w = np.exp(wl.importance_sigma * z) / z_scale
    centres = _unit(rng.standard_normal((len(born), wl.dim)))
    noise = lambda n: rng.standard_normal((n, wl.dim)) / np.sqrt(wl.dim)
    vec = _unit(centres[fact] + wl.entry_noise * noise(wl.entries)).astype(np.float32)
    text = np.clip(np.exp(rng.normal(np.log(100), 0.6, wl.entries)), 16, 2000).astype(np.int64)
    surprise = np.clip(3.5 + wl.surprise_corr * z[fact] + rng.standard_normal(wl.entries), 1, 8)
    surprise[rng.random(wl.entries) < wl.surprise_unknown] = np.nan

    # Queries, one day at a time: Poisson counts per fact from its rate at mid-day.
    qt, qf = [], []
    for d in range(int(np.ceil(wl.days + wl.test_days))):
        lo, hi = d * DAY, min((d + 1) * DAY, t1 + wl.test_days * DAY)
        alive = np.flatnonzero(born < hi)
        if hi <= lo or not len(alive):
            continue
        age = np.maximum((lo + hi) / 2 - born[alive], 0.0)
        lam = wl.query_rate * w[alive] / (1 + age / (wl.recency_days * DAY)) * (hi - lo) / DAY
        cnt = rng.poisson(lam)
        f = np.repeat(alive, cnt)
        t = rng.uniform(np.maximum(lo, born[f]), hi)
        extra = rng.geometric(1 / (1 + wl.burst_mean), len(f)) - 1  # follow-ups per query
        fb = np.repeat(f, extra)
        tb = np.repeat(t, extra) + rng.exponential(3 * 3600.0, len(fb))
        qt += [t, tb]
        qf += [f, fb]
    qt, qf = np.concatenate(qt), np.concatenate(qf)
    keep = qt <= t1 + wl.test_days * DAY
    order = np.argsort(qt[keep], kind="stable")
    qt, qf = qt[keep][order], qf[keep][order]
    qvec = _unit(centres[qf] + wl.query_noise * noise(len(qf))).astype(np.float32)
    return {"created": created, "fact": fact, "vec": vec, "text": text, "surprise": surprise,
            "qt": qt, "qf": qf, "qvec": qvec, "t1": t1, "t0": wl.t0_frac * t1, "n_facts": len(born)}


def credits(h: dict) -> np.ndarray:
    """For each query, the entry it credits: the existing entry of its fact nearest to the query (-1: none)."""
    members = {}
    for i, f in enumerate(h["fact"]):
        members.setdefault(int(f), []).append(i)
    out = np.full(len(h["qt"]), -1, np.int64)
    for j, (t, f) in enumerate(zip(h["qt"], h["qf"])):
        m = np.asarray(members[int(f)])
        m = m[h["created"][m] <= t]
        if len(m):
            out[j] = m[np.argmax(h["vec"][m] @ h["qvec"][j])]
    return out


def stats_at(h: dict, credit: np.ndarray, T: float) -> EntryStats:
    """The bank's statistics at time ``T`` (entries created by then; queries up to then)."""
    n = int(np.searchsorted(h["created"], T, side="right"))  # created is sorted
    q = (h["qt"] <= T) & (credit >= 0)
    hits = np.bincount(credit[q], minlength=len(h["created"]))[:n]
    last = h["created"].copy()
    np.maximum.at(last, credit[q], h["qt"][q])
    return EntryStats(ids=np.arange(n), created=EPOCH + h["created"][:n], last_access=EPOCH + last[:n],
                      hits=hits, surprise=h["surprise"][:n].astype(np.float32),
                      redundancy=redundancy(h["vec"][:n]))


def apply_moves(tiers: list, moves) -> list:
    out = list(tiers)
    for i, t in moves:
        out[i] = t
    return out


def retrievable(h: dict, tiers: list, k: int) -> tuple:
    """(first-query-per-fact rate, per-query rate) over phase-3 queries for the given final tiers."""
    tiers = np.asarray([{"hot": 2, "warm": 1}.get(t, 0) for t in tiers])
    q = h["qt"] > h["t1"]
    qv, qf = h["qvec"][q], h["qf"][q]
    idx = np.flatnonzero(tiers > 0)
    if not len(qf):
        return float("nan"), float("nan")
    if not len(idx):
        return 0.0, 0.0
    bank = h["vec"][idx].astype(np.float16).astype(np.float32)  # hot: float16
    warm = tiers[idx] == 1
    if warm.any():
        codes, scale = quantize(h["vec"][idx[warm]])
        bank[warm] = dequantize(codes, scale)
    kk = min(k, len(idx))
    ok = np.zeros(len(qf), bool)
    for s in range(0, len(qf), 1024):
        sim = qv[s:s + 1024] @ bank.T  # (Q, M)
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        ok[s:s + 1024] = (h["fact"][idx[top]] == qf[s:s + 1024, None]).any(axis=1)
    _, first = np.unique(qf, return_index=True)
    return float(ok[first].mean()), float(ok.mean())


def simulate(wl: Workload, seed: int, policies=POLICIES, *, fit_kw: dict | None = None) -> dict:
    """One seed: retrievability per policy (and ``'none'``: no eviction), plus bookkeeping."""
    h = generate(wl, seed)
    credit = credits(h)
    s0 = stats_at(h, credit, h["t0"])
    s1 = stats_at(h, credit, h["t1"])
    q = (h["qt"] > h["t0"]) & (h["qt"] <= h["t1"]) & (credit >= 0)
    accessed = np.zeros(len(s0), bool)
    accessed[credit[q][credit[q] < len(s0)]] = True
    pols = {"fifo": FIFOPolicy(), "lru": LRUPolicy(), "random": RandomPolicy(seed),
            "learned": LearnedPolicy(seed=seed)}
    n = len(s1)
    tiers0 = ["hot"] * n
    total = int(entries_bytes(tiers0, h["text"], wl.dim).sum())
    budget = int((1 - wl.evict) * total)
    out = {"seed": seed, "entries": n, "facts": h["n_facts"], "queries_phase3": int((h["qt"] > h["t1"]).sum()),
           "train_positive": float(accessed.mean()), "bytes": total, "budget": budget, "results": {}}
    out["results"]["none"] = retrievable(h, tiers0, wl.k)
    for name in policies:
        pol = pols[name]
        if name == "learned":
            tic = time.perf_counter()
            pol.fit(s0, accessed, EPOCH + h["t0"], **(fit_kw or {}))
            out["fit_s"], out["n_params"] = time.perf_counter() - tic, pol.n_params
        moves = plan_degradation(s1.ids, tiers0, h["text"], wl.dim, pol.scores(s1, EPOCH + h["t1"]), budget)
        final = apply_moves(tiers0, moves)
        assert entries_bytes(final, h["text"], wl.dim).sum() <= budget
        out["results"][name] = retrievable(h, final, wl.k)
    return out


class _Lookup:
    """The bank's encoder in the replay: texts map to the workload's vectors."""

    def __init__(self, table: dict, dim: int):
        self.table, self.dim, self.name = table, dim, f"workload-{dim}"

    def __call__(self, texts):
        return np.stack([self.table[t] for t in texts])


def through_bank(wl: Workload, seed: int, workdir: str, policies=POLICIES) -> dict:
    """The same history replayed through :class:`MemoryBank` itself: every entry is a
    ``bank.add`` (surprise given, forced past the gate, near-duplicate merging off, as
    the simulation has none), every credited query a ``store.touch``; at ``t0``
    ``train_retention`` takes its snapshot and at ``t1`` trains on it. Then a copy of
    the file per policy is forced to ``(1 - evict)`` of its bytes by
    ``bank.enforce_budget`` and the phase-3 queries are ``bank.search`` calls."""
    import shutil

    from mlx_synapse.memory.bank import MemoryBank

    h = generate(wl, seed)
    credit = credits(h)
    n = int(np.searchsorted(h["created"], h["t1"], side="right"))
    texts = [f"entry {i} " + "x" * max(0, int(b) - len(f"entry {i} ")) for i, b in enumerate(h["text"][:n])]
    enc = _Lookup(dict(zip(texts, h["vec"][:n])), wl.dim)
    base = os.path.join(workdir, f"seed{seed}.db")
    ids = np.zeros(n, np.int64)
    qmask = (h["qt"] <= h["t1"]) & (credit >= 0)
    qts, qcs = h["qt"][qmask], credit[qmask]
    out = {"seed": seed, "entries": n, "facts": h["n_facts"], "queries_phase3": int((h["qt"] > h["t1"]).sum()),
           "results": {}}
    with MemoryBank(base, enc, dedup=None, backend="numpy", seed=seed, retrain_every=None) as bank:
        nxt, snapped = 0, False
        for j in range(len(qts) + 1):
            t = qts[j] if j < len(qts) else h["t1"]
            if not snapped and t > h["t0"]:
                while nxt < n and h["created"][nxt] <= h["t0"]:
                    s = h["surprise"][nxt]
                    ids[nxt] = bank.add(texts[nxt], user="u", surprise=None if np.isnan(s) else float(s),
                                        force=True, now=EPOCH + h["created"][nxt])
                    nxt += 1
                bank.train_retention(now=EPOCH + h["t0"])  # the first call takes the snapshot
                snapped = True
            while nxt < n and h["created"][nxt] <= t:
                s = h["surprise"][nxt]
                ids[nxt] = bank.add(texts[nxt], user="u", surprise=None if np.isnan(s) else float(s),
                                    force=True, now=EPOCH + h["created"][nxt])
                nxt += 1
            if j < len(qts):
                bank.store.touch(int(ids[qcs[j]]), now=EPOCH + qts[j])
        report = bank.train_retention(now=EPOCH + h["t1"])
        out["train_positive"] = report["positives"] / max(report["examples"], 1)
        total = bank.stats()["bytes"]
    budget = int((1 - wl.evict) * total)
    out.update(bytes=total, budget=budget, trained=report["trained"])
    fact_of = dict(zip(ids.tolist(), h["fact"][:n].tolist()))
    q3 = np.flatnonzero(h["qt"] > h["t1"])
    _, first = np.unique(h["qf"][q3], return_index=True)
    for name in ("none",) + tuple(policies):
        path = os.path.join(workdir, f"seed{seed}-{name}.db")
        shutil.copyfile(base, path)
        with MemoryBank(path, enc, dedup=None, backend="numpy", seed=seed, retrain_every=None,
                        policy="lru" if name == "none" else name) as bank:
            if name != "none":
                bank.enforce_budget(budget, now=EPOCH + h["t1"])
                assert bank.stats()["bytes"] <= budget
            ok = np.array([any(fact_of[e.id] == h["qf"][j]
                               for e, _ in bank.search(h["qvec"][j], wl.k, user="u", touch=False))
                           for j in q3])
        out["results"][name] = (float(ok[first].mean()), float(ok.mean()))
    out["fit_s"], out["n_params"] = 0.0, LearnedPolicy().n_params
    return out


def _ms(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.benchmarks.memory_bench",
                                description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=5000)
    p.add_argument("--evict", type=float, default=0.9, help="fraction of the bank's bytes to free at t1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=5, help="top-k of the retrieval check")
    p.add_argument("--json", default=None, help="write every seed's results here")
    p.add_argument("--through-bank", action="store_true",
                   help="replay the history through MemoryBank itself (SQLite file, index, "
                        "train_retention, enforce_budget, search) instead of the array simulation")
    args = p.parse_args(argv)
    if not 0 <= args.evict < 1:
        p.error(f"--evict must be in [0, 1) but got {args.evict}")
    if args.entries < 10 or args.dim < 4 or args.k < 1:
        p.error("need --entries >= 10, --dim >= 4, --k >= 1")
    wl = Workload(entries=args.entries, dim=args.dim, k=args.k, evict=args.evict)

    runs = []
    tic = time.perf_counter()
    import tempfile

    workdir = tempfile.TemporaryDirectory()
    for i, seed in enumerate(args.seeds):
        r = through_bank(wl, seed, workdir.name) if args.through_bank else simulate(wl, seed)
        runs.append(r)
        print(f"[{i + 1}/{len(args.seeds)}] seed {seed}: {r['entries']} entries, {r['facts']} facts, "
              f"{r['queries_phase3']} phase-3 queries, train positives {r['train_positive']:.0%}, "
              f"fit {r['fit_s']:.1f}s", file=sys.stderr, flush=True)
    names = ("none",) + POLICIES
    workdir.cleanup()
    mode = "through MemoryBank" if args.through_bank else "array simulation"
    print(f"# {mode}: {args.entries} entries, dim {args.dim}, evict {args.evict:.0%} of bytes, top-{args.k}, "
          f"seeds {' '.join(map(str, args.seeds))}; learned MLP {runs[0]['n_params']} params; "
          f"{time.perf_counter() - tic:.1f}s")
    print("| policy | facts retrievable (mean ± std) | queries served (mean ± std) | per seed (facts) |")
    print("| --- | ---: | ---: | --- |")
    summary = {}
    for name in names:
        a = [r["results"][name][0] for r in runs]
        b = [r["results"][name][1] for r in runs]
        summary[name] = _ms(a)
        label = "no eviction (upper bound)" if name == "none" else name
        print(f"| {label} | {summary[name][0]:.3f} ± {summary[name][1]:.3f} | "
              f"{_ms(b)[0]:.3f} ± {_ms(b)[1]:.3f} | {' '.join(f'{x:.3f}' for x in a)} |")
    learned = summary["learned"][0]
    wins = {b: sum(r["results"]["learned"][0] > r["results"][b][0] for r in runs) for b in ("fifo", "lru")}
    ok = learned > summary["fifo"][0] and learned > summary["lru"][0]
    print(f"learned vs fifo: {learned - summary['fifo'][0]:+.3f} (wins {wins['fifo']}/{len(runs)} seeds); "
          f"vs lru: {learned - summary['lru'][0]:+.3f} (wins {wins['lru']}/{len(runs)} seeds)")
    print("RESULT: learned beats FIFO and LRU" if ok else "RESULT: FAIL - learned does not beat both FIFO and LRU")
    if args.json:
        Path(args.json).write_text(json.dumps({"workload": asdict(wl), "runs": runs}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
