"""Retrieval quality of the memory bank's encoders on the personal-memory set.

Each encoder embeds every fact and every query of ``retrieval_set.build(seed)``;
a query's facts are ranked by cosine similarity (the rows are unit norm, so a dot
product), and the benchmark reports recall@1, recall@5 and mean reciprocal rank,
overall and per category, with the encoding time per text (the mean over one pass
of every fact and query, after an uncounted warm-up). The hidden-state encoder runs
the default model (SmolLM2-135M-Instruct) on the NumPy backend, one text at a
time; ``--sweep`` adds one hidden-state run per listed layer (each from scratch,
so the sweep costs ~6 full passes: ~30 min on a shared 2-core machine).

Usage::

    python -m mlx_synapse.benchmarks.memory_retrieval                         # minilm, hidden:-1, sweep
    python -m mlx_synapse.benchmarks.memory_retrieval --encoders minilm hidden:15 --sweep none --queries 200
    python -m mlx_synapse.benchmarks.memory_retrieval --json retrieval.json

Encoder specs: ``minilm`` (all-MiniLM-L6-v2) and ``hidden:<layer>`` (block index,
negative from the end; -1 is the final block after the model's last norm).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .retrieval_set import RetrievalSet, build, mean_jaccard

KS = (1, 5)


def ranks(queries: np.ndarray, facts: np.ndarray, target: Sequence[int]) -> np.ndarray:
    """0-based rank of each query's target fact among all facts by cosine similarity.

    Args:
        queries: (Q, D) unit rows. facts: (F, D) unit rows. target: Q indices into facts.

    Returns:
        (Q,) int: how many facts score strictly higher than the target (ties count for it).
    """
    scores = queries.astype(np.float64) @ facts.astype(np.float64).T  # (Q, F)
    hit = scores[np.arange(len(target)), np.asarray(target)]
    return (scores > hit[:, None]).sum(axis=1)


def metrics(r: np.ndarray) -> Dict[str, float]:
    """recall@k for ``KS`` and MRR of 0-based ranks ``r``."""
    out = {f"recall@{k}": float(np.mean(r < k)) for k in KS}
    out["mrr"] = float(np.mean(1.0 / (r + 1)))
    return out


def lexical_ranks(data: RetrievalSet, fact_vecs: np.ndarray, query_vecs: np.ndarray, weight: float,
                  pool: int = 32) -> np.ndarray:
    """Ranks after ``MemoryBank.search(..., lexical=weight)``'s re-ranking: the top ``pool``
    facts by cosine re-scored as cosine + weight * word overlap; a target outside the
    pool keeps its dense rank (>= pool)."""
    from mlx_synapse.memory.lexical import overlap

    scores = query_vecs.astype(np.float64) @ fact_vecs.astype(np.float64).T
    out = np.empty(len(data.target), np.int64)
    for i, (q, t) in enumerate(zip(data.queries, data.target)):
        top = np.argsort(-scores[i], kind="stable")[:pool]
        if t not in top:
            out[i] = int((scores[i] > scores[i, t]).sum())
            continue
        mixed = scores[i, top] + weight * overlap(q, [data.facts[j] for j in top])
        out[i] = int((mixed > mixed[list(top).index(t)]).sum())
    return out


def evaluate(data: RetrievalSet, fact_vecs: np.ndarray, query_vecs: np.ndarray, lexical: float = 0.0) -> Dict:
    """Overall and per-category metrics (with query counts)."""
    r = (lexical_ranks(data, fact_vecs, query_vecs, lexical) if lexical
         else ranks(query_vecs, fact_vecs, data.target))
    cats = np.asarray(data.category)
    per = {c: {**metrics(r[cats == c]), "n": int((cats == c).sum())} for c in data.categories}
    return {**metrics(r), "n": len(r), "per_category": per}


def encode_timed(encoder, texts: Sequence[str], batch: int = 64, desc: str = "") -> tuple:
    """(vectors (N, D), ms per text), a few texts encoded first and not counted."""
    from tqdm import tqdm

    encoder(list(texts[:4]))  # warm-up: BLAS threads, lazy tokenizer and rope tables
    chunks = []
    tic = time.perf_counter()
    for i in tqdm(range(0, len(texts), batch), desc=desc, leave=False, unit="batch"):
        chunks.append(encoder(list(texts[i : i + batch])))
    ms = (time.perf_counter() - tic) * 1000 / max(1, len(texts))
    return np.concatenate(chunks), ms


class Encoders:
    """Builds encoders from specs, loading MiniLM and the language model once each."""

    def __init__(self, model_path: Optional[str] = None, backend: str = "numpy"):
        self.model_path, self.backend = model_path, backend
        self._lm = None

    def lm(self):
        if self._lm is None:
            from mlx_synapse import load

            self._lm = load(self.model_path, backend=self.backend)
        return self._lm

    def make(self, spec: str):
        from mlx_synapse.memory import HiddenStateEncoder, MiniLMEncoder

        if spec == "minilm":
            return MiniLMEncoder(backend="auto")
        if spec.startswith("hidden:"):
            try:
                layer = int(spec.split(":", 1)[1])
            except ValueError:
                layer = None
            if layer is not None:
                model, tokenizer = self.lm()
                return HiddenStateEncoder(model, tokenizer, layer=layer)
        raise ValueError(f"[memory_retrieval] unknown encoder {spec!r}; use 'minilm' or 'hidden:<layer>' "
                         "(e.g. hidden:-1, hidden:15).")


def run_encoder(encoder, data: RetrievalSet, desc: str, lexical: Sequence[float] = ()) -> Dict:
    texts = data.facts + data.queries
    vecs, ms = encode_timed(encoder, texts, desc=desc)
    result = evaluate(data, vecs[: len(data.facts)], vecs[len(data.facts) :])
    out = {"name": encoder.name, "dim": int(encoder.dim), "ms_per_text": ms, **result}
    for w in lexical:
        out[f"lexical {w:g}"] = evaluate(data, vecs[: len(data.facts)], vecs[len(data.facts) :], w)
    return out


def personal_set(n_facts: int, seed: int = 0) -> RetrievalSet:
    """The personalization benchmark's facts (+ its 120 distractors) and every question."""
    from .personal_facts import build as build_personal

    fs = build_personal(seed, n_facts)
    qs = [(i, q) for i, f in enumerate(fs.facts) for q in f.questions]
    return RetrievalSet(facts=[f.text for f in fs.facts] + fs.distractors, queries=[q for _, q in qs],
                        target=[i for i, _ in qs], category=[fs.facts[i].category for i, _ in qs],
                        family=[fs.facts[i].key for i, _ in qs], answer=[fs.facts[i].answer for i, _ in qs],
                        distractor=[False] * len(fs.facts) + [True] * len(fs.distractors), seed=seed)


def _row(label: str, m: Dict, ms: Optional[float] = None) -> str:
    cells = [label] + [f"{m[f'recall@{k}']:.3f}" for k in KS] + [f"{m['mrr']:.3f}"]
    if ms is not None:
        cells.append(f"{ms:.1f}")
    return "| " + " | ".join(cells) + " |"


def report(data: RetrievalSet, results: Dict[str, Dict], sweep: List[Dict], header: str) -> str:
    """Markdown tables: overall, per category, and the layer sweep."""
    lines = [header, "", "| encoder | R@1 | R@5 | MRR | ms/text |", "| --- | ---: | ---: | ---: | ---: |"]
    for spec, r in results.items():
        lines.append(_row(f"`{spec}`", r, r["ms_per_text"]))
        lines += [_row(f"`{spec}` + {key}", r[key]) for key in r if key.startswith("lexical ")]
    if results:
        specs = list(results)
        lines += ["", "| category | n | " + " | ".join(f"{s} R@1 | {s} R@5" for s in specs) + " |",
                  "| --- | ---: | " + " | ".join("---: | ---:" for _ in specs) + " |"]
        for c in data.categories:
            cells = [c, str(data.category.count(c))]
            for s in specs:
                m = results[s]["per_category"][c]
                cells += [f"{m['recall@1']:.3f}", f"{m['recall@5']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    if sweep:
        lines += ["", "| hidden layer | R@1 | R@5 | MRR | ms/text |", "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [_row(str(s["layer"]), s, s["ms_per_text"]) for s in sweep]
        best = max(sweep, key=lambda s: (s["mrr"], s["recall@1"]))
        lines += ["", (f"best layer by MRR: {best['layer']} (R@1 {best['recall@1']:.3f}, "
                       f"R@5 {best['recall@5']:.3f}, MRR {best['mrr']:.3f})")]
    return "\n".join(lines)


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Recall@1/@5 and MRR of the memory bank's encoders.")
    p.add_argument("--encoders", nargs="+", default=["minilm", "hidden:-1"],
                   help="encoder specs: minilm, hidden:<layer> (default: minilm hidden:-1)")
    p.add_argument("--sweep", default="0,3,6,9,12,15,18,21,24,27,29",
                   help="comma-separated hidden-state layers to sweep, or 'none'")
    p.add_argument("--queries", type=int, default=None, help="use N queries drawn at random (all facts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the retrieval set")
    p.add_argument("--model", default=None, help="language model for hidden:<layer> (default model)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "mlx", "auto"],
                   help="backend of the language model (default numpy)")
    p.add_argument("--lexical", type=float, nargs="*", default=[],
                   help="also rank with MemoryBank.search's lexical re-ranking at these weights (e.g. 0.1 0.2)")
    p.add_argument("--set", default="retrieval", dest="which",
                   help="'retrieval' (the paraphrase set) or 'personal:N' (the personalization benchmark's "
                        "N facts and their questions)")
    p.add_argument("--json", default=None, help="also write all numbers to this file")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    from .common import commit, machine

    if args.which.startswith("personal:"):
        data = personal_set(int(args.which.split(":", 1)[1]), args.seed)
    elif args.which == "retrieval":
        data = build(args.seed)
    else:
        raise SystemExit(f"error: --set must be 'retrieval' or 'personal:N' but got {args.which!r}.")
    if args.queries is not None:
        data = data.subset(args.queries, seed=args.seed)
    layers = [] if args.sweep.strip().lower() == "none" else [int(x) for x in args.sweep.split(",") if x.strip()]
    encoders = Encoders(args.model, args.backend)

    results: Dict[str, Dict] = {}
    by_layer: Dict[int, Dict] = {}  # hidden-state results by block index, shared with the sweep
    for spec in args.encoders:
        enc = encoders.make(spec)
        results[spec] = run_encoder(enc, data, spec, args.lexical)
        if spec.startswith("hidden:"):
            by_layer[enc.layer] = results[spec]
        print(_row(f"`{spec}`", results[spec], results[spec]["ms_per_text"]), flush=True)
        for w in args.lexical:
            print(_row(f"`{spec}` + lexical {w:g}", results[spec][f"lexical {w:g}"]), flush=True)
    sweep = []
    for layer in layers:
        enc = encoders.make(f"hidden:{layer}")
        if enc.layer not in by_layer:
            by_layer[enc.layer] = run_encoder(enc, data, f"layer {enc.layer}")
            print(_row(f"layer {enc.layer}", by_layer[enc.layer], by_layer[enc.layer]["ms_per_text"]), flush=True)
        sweep.append({"layer": enc.layer, **by_layer[enc.layer]})

    header = (f"retrieval set seed {args.seed}: {len(data.facts)} facts ({sum(data.distractor)} distractors), "
              f"{len(data.queries)} queries, mean word Jaccard query-fact {mean_jaccard(data):.3f}\n"
              f"{machine()}, commit {commit()}, language model backend {args.backend}")
    print()
    print(report(data, results, sweep, header))
    if args.json:
        out = {"seed": args.seed, "facts": len(data.facts), "queries": len(data.queries),
               "distractors": sum(data.distractor), "mean_jaccard": mean_jaccard(data),
               "machine": machine(), "commit": commit(), "backend": args.backend,
               "encoders": results, "sweep": sweep}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
